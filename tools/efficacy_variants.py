"""Efficacy once an anchor is open: what strength, write layer and anchor shape do to refusal and fluency.

The compile's program steers only where its anchor is open. This script measures, on the val split (or
``--split test``) of the default refusal sample set, variants of one gated strategy that change one thing
each, so README's claims about them rest on a command:

- **strength**: the recipe's 2 against 3 and 4 (times the fitted direction);
- **write layer**: the same algorithm at layer 12 against 14, and both at once;
- **anchor shape**: the base anchor (the prompt's last tokens and the desired completion against every
  neutral token) against a pair of anchors, one for the prompt's end and one for the answer, each trained
  with the other's tokens as negatives, and against thresholds held on the neutral prompts' last tokens;
- **how long the gate stays open while the model answers**: anchors that also open on the targets'
  undesired (compliant) completions, at several false-positive budgets, and the base anchor plus a
  second *catch* strategy whose anchor opens on those completions only (the program search's step 6).

Per variant: judged refusal of targets and neutral prompts (24 greedy tokens), the share of targets and
of neutral prompts whose anchor is open at the last prompt token, refusal among the open targets, and the
base model's perplexity (median) and trigram repetition of the refusals.

    .venv/bin/python tools/efficacy_variants.py [--split val|test] [--algorithm logistic_probe] [--only TEXT]

About 10 minutes on 2 cores once the compile's capture is stored (the first run captures, ~5 minutes).
"""

from __future__ import annotations

import argparse

import torch

from masteer.compiler.capture.activations import COMPLETION, PROMPT_TAIL
from masteer.compiler.program.search import Candidate, strategy_of
from masteer.compiler.strategies.algorithms import get_algorithm
from masteer.compiler.program.anchors import fit_gate
from masteer.compiler.evaluation import evaluate_refusal
from masteer.compiler.evaluation.fluency import fluency
from masteer.compiler.evaluation.gate_report import OPEN, program_opening, prompt_openings
from masteer.compiler.pipeline import (CompileOptions, _prepare, anchor_negatives, capture_activations, fit_sequences,
                                       new_adapter)
from masteer.compiler.program.steering_program import Program, lower
from masteer.runtime import host_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--algorithm", default="logistic_probe")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the variants whose name contains TEXT (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    options = CompileOptions(progress=False)
    quiet = lambda *a: None   # noqa: E731
    recipe, samples, loaded, layers, seed, _ = _prepare(options, None, quiet)
    train, val = samples.select(split="train"), samples.select(split="val")
    seqs = fit_sequences(train + val, anchor_negatives(train, options, loaded, seed, quiet))
    acts = capture_activations(options, loaded, seqs, layers, samples, quiet)
    inputs = seqs.fit_inputs(acts)
    host = host_layout(loaded.model).form
    targets = [i for i, (s, r) in enumerate(zip(seqs.samples, seqs.roles))
               if s.label == "target" and s.split == "train" and r != "negative"]
    neutral = [i for i, s in enumerate(seqs.samples) if s.label == "neutral" and s.split == "train"]
    # the undesired (compliant) completions of the same targets: an anchor that also opens on them stays open
    # when the model has begun to comply, which a per-token gate otherwise loses
    complying = [i for i, (s, r) in enumerate(zip(seqs.samples, seqs.roles))
                 if s.label == "target" and s.split == "train" and r == "negative"]

    def tokens(ids, layer, kinds=None):
        return acts.tokens_of(ids, layer, kinds=kinds) if kinds else acts.tokens_of(ids, layer)

    def gates(layer):
        tail, answer = tokens(targets, layer, (PROMPT_TAIL,)), tokens(targets, layer, (COMPLETION,))
        shut, tails = tokens(neutral, layer), tokens(neutral, layer, (PROMPT_TAIL,))
        complied = tokens(complying, layer, (COMPLETION,))
        return {"base": fit_gate(torch.cat([tail, answer]), shut, host, seed=seed),
                "base, held on neutral prompt ends": fit_gate(torch.cat([tail, answer]), shut, host, seed=seed,
                                                              also_shut=(tails,)),
                "prompt end": fit_gate(tail, torch.cat([shut, answer]), host, seed=seed, also_shut=(tails,)),
                "answer": fit_gate(answer, torch.cat([shut, tail]), host, seed=seed),
                "base + compliance": fit_gate(torch.cat([tail, answer, complied]), shut, host, seed=seed),
                "compliance": fit_gate(complied, shut, host, seed=seed),
                "compliance @0.01": fit_gate(complied, shut, host, seed=seed, fpr_budget=0.01),
                **{f"base + compliance @{b:g}": fit_gate(torch.cat([tail, answer, complied]), shut, host, seed=seed,
                                                         fpr_budget=b) for b in (0.04, 0.08)},
                "base + compliance, held on neutral prompt ends": fit_gate(
                    torch.cat([tail, answer, complied]), shut, host, seed=seed, also_shut=(tails,))}

    def strategy(layer, strength, gate, name):
        proposal = get_algorithm(args.algorithm).fit(inputs, layer)
        return strategy_of(Candidate(name, recipe.name, proposal, strength), gate)

    items = samples.select(split=args.split)
    groups = {"target": [s for s in items if s.label == "target"], "neutral": [s for s in items if s.label == "neutral"]}
    g10, g12, g14 = gates(10), gates(12), gates(14)
    short = args.algorithm.replace("_", " ")
    variants = {
        f"{short} L14, strength 2, base anchor": [strategy(14, 2.0, g14["base"], "a")],
        f"{short} L14, strength 3": [strategy(14, 3.0, g14["base"], "a")],
        f"{short} L14, strength 4": [strategy(14, 4.0, g14["base"], "a")],
        f"{short} L12, strength 2": [strategy(12, 2.0, g12["base"], "a")],
        f"{short} L12 + L14, strength 2 each": [strategy(12, 2.0, g12["base"], "a"), strategy(14, 2.0, g14["base"], "b")],
        f"{short} L14, base anchor held on neutral prompt ends": [
            strategy(14, 2.0, g14["base, held on neutral prompt ends"], "a")],
        f"{short} L14, anchor also open on compliant answers": [strategy(14, 2.0, g14["base + compliance"], "a")],
        f"{short} L14, anchor also open on compliant answers, held on prompt ends": [
            strategy(14, 2.0, g14["base + compliance, held on neutral prompt ends"], "a")],
        **{f"{short} L{layer}, anchor also open on compliant answers, budget {b:g}": [
            strategy(layer, 2.0, g[f"base + compliance @{b:g}"], "a")]
           for layer, g in ((14, g14), (12, g12)) for b in (0.04, 0.08)},
        f"{short} L14 base anchor + L14 anchor open on compliant answers only": [
            strategy(14, 2.0, g14["base"], "a"), strategy(14, 2.0, g14["compliance"], "b")],
        f"{short} L14 base anchor + L12 anchor open on compliant answers only": [
            strategy(14, 2.0, g14["base"], "a"), strategy(12, 2.0, g12["compliance"], "b")],
        f"{short} L14 base anchor + L10 anchor open on compliant answers only": [
            strategy(14, 2.0, g14["base"], "a"), strategy(10, 2.0, g10["compliance"], "b")],
        f"{short} L14 base anchor + L12 anchor open on compliant answers only, budget 0.01": [
            strategy(14, 2.0, g14["base"], "a"), strategy(12, 2.0, g12["compliance @0.01"], "b")],
        f"{short} L14 base anchor held on neutral prompt ends + L12 anchor open on compliant answers only": [
            strategy(14, 2.0, g14["base, held on neutral prompt ends"], "a"), strategy(12, 2.0, g12["compliance"], "b")],
        f"{short} L12, anchor also open on compliant answers": [strategy(12, 2.0, g12["base + compliance"], "a")],
        f"{short} L12, anchor also open on compliant answers, held on prompt ends": [
            strategy(12, 2.0, g12["base + compliance, held on neutral prompt ends"], "a")],
        f"{short} L14, prompt-end + answer anchors": [strategy(14, 2.0, g14["prompt end"], "a"),
                                                     strategy(14, 2.0, g14["answer"], "b")],
        f"{short} L12, prompt-end + answer anchors": [strategy(12, 2.0, g12["prompt end"], "a"),
                                                     strategy(12, 2.0, g12["answer"], "b")],
    }
    print(f"| variant ({args.split}) | target refusal | neutral refusal | open: targets | open: neutral | "
          f"refusal where open | perplexity of refusals | repetition |\n|---|---|---|---|---|---|---|---|")
    base = evaluate_refusal(loaded.model, loaded.tokenizer, {"base": None}, groups, {"target": "up"},
                            max_new_tokens=24, batch_size=32, progress=False)
    print(f"| base model | {100 * base.rate('target', 'base'):.1f}% | {100 * base.rate('neutral', 'base'):.1f}% "
          f"| | | | | |")
    for name, strategies in variants.items():
        if args.only and not any(text in name for text in args.only):
            continue
        adapter = lower(Program(strategies), new_adapter(loaded, samples, recipe))
        opened_t = program_opening(prompt_openings(loaded.model, loaded.tokenizer, adapter,
                                                   [s.prompt for s in groups["target"]]))
        opened_n = program_opening(prompt_openings(loaded.model, loaded.tokenizer, adapter,
                                                   [s.prompt for s in groups["neutral"]]))
        result = evaluate_refusal(loaded.model, loaded.tokenizer, {name: adapter}, groups, {"target": "up"},
                                  max_new_tokens=24, batch_size=32, progress=False)
        opened = [s.prompt for s, v in zip(groups["target"], opened_t) if v >= OPEN]
        where_open = sum(result.verdicts[name][p] for p in opened) / max(len(opened), 1)
        refusals = [(s.prompt, result.responses[name][s.prompt]) for s in groups["target"]
                    if result.verdicts[name][s.prompt]]
        fluent = fluency(loaded.model, loaded.tokenizer, refusals) if refusals else {"perplexity": None,
                                                                                     "repetition": None}
        print(f"| {name} | {100 * result.rate('target', name):.1f}% | {100 * result.rate('neutral', name):.1f}% | "
              f"{sum(v >= OPEN for v in opened_t) / len(opened_t):.2f} | "
              f"{sum(v >= OPEN for v in opened_n) / len(opened_n):.2f} | {100 * where_open:.1f}% | "
              f"{fluent['perplexity']} | {fluent['repetition']} |", flush=True)


if __name__ == "__main__":
    main()
