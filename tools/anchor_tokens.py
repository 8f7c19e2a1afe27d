"""Which target tokens should an anchor learn to open on? A val-only comparison on the embedded model.

The shipped anchors open on the prompt tail and the *desired* completion of target samples (``fire``
set ``desired``). Per token, that steers less than DESIGN.md's per-prompt decision does (README: 87.5%
against 97.5% harmful refusal on test). This script refits one strategy's anchor on other token sets
and measures, on the val split only, the per-token adapter beside the same strategy decided once per
prompt (``compiler/evaluation/prompt_decision.py``), with the gate report:

- ``desired``: prompt tail + desired completions (what the compiler ships);
- ``both``: prompt tail + desired and undesired completions (open wherever a target is being answered);
- ``undesired``: prompt tail + undesired completions only.

Usage (about a minute per token set after the capture, which a default ``masteer-compile refusal``
run leaves in the activation store)::

    .venv/bin/python tools/anchor_tokens.py --algorithm pca --layer 14 --fire desired,both,undesired
"""

from __future__ import annotations

import argparse

import torch

from masteer.compiler.capture.activations import COMPLETION, PROMPT_TAIL
from masteer.compiler.strategies.algorithms import get_algorithm
from masteer.compiler.program.anchors import fit_gate
from masteer.compiler.samples.builders import build_samples, resolve_recipe
from masteer.compiler.evaluation import ResultCache, evaluate_refusal
from masteer.compiler.evaluation.gate_report import format_gate_reports, gate_reports
from masteer.compiler.common.models import load_model
from masteer.compiler.pipeline import CompileOptions, anchor_negatives, capture_activations, fit_sequences, new_adapter
from masteer.compiler.program.steering_program import Program, ProgramStrategy, lower
from masteer.compiler.evaluation.prompt_decision import decided_per_prompt
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET
from masteer.runtime import host_layout

FIRE_ROLES = {"desired": ("positive",), "both": ("positive", "negative"), "undesired": ("negative",)}
CAPTURE_LAYERS = (8, 10, 12, 14, 16)   # the default compile's layers: its stored capture is reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="refusal")
    parser.add_argument("--algorithm", default="pca")
    parser.add_argument("--layer", type=int, default=14)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--fire", default="desired,both,undesired", help="token sets, comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    fire_sets = args.fire.split(",")
    unknown = sorted(set(fire_sets) - set(FIRE_ROLES))
    if unknown:
        parser.error(f"unknown token set(s) {unknown}; choose from {sorted(FIRE_ROLES)}")
    if args.layer not in CAPTURE_LAYERS:
        parser.error(f"--layer must be one of {CAPTURE_LAYERS}")
    torch.set_num_threads(2)

    loaded = load_model()
    recipe = resolve_recipe(args.recipe)
    samples = build_samples(recipe, recipe.defaults.seed)
    options = CompileOptions(recipe=args.recipe, progress=False)
    train, val = samples.select(split="train"), samples.select(split="val")
    seqs = fit_sequences(train + val, anchor_negatives(train, options, loaded, recipe.defaults.seed, print))
    acts = capture_activations(options, loaded, seqs, CAPTURE_LAYERS, samples, print)
    proposal = get_algorithm(args.algorithm).fit(seqs.fit_inputs(acts), args.layer)
    targets = [i for i, s in enumerate(seqs.samples) if s.label == TARGET and s.split == "train"]
    groups = {"target": [s for s in val if s.label == TARGET], "neutral": [s for s in val if s.label == NEUTRAL]}
    prompts = [s.prompt for g in groups.values() for s in g]
    cache = ResultCache()
    for fire in fire_sets:
        roles = FIRE_ROLES[fire]
        fire_on = [i for i in targets if seqs.roles[i] in roles]
        gate = fit_gate(acts.tokens_of(fire_on, args.layer, kinds=(PROMPT_TAIL, COMPLETION)),
                        acts.tokens_of(seqs.anchor_negatives(), args.layer), host_layout(loaded.model).form,
                        seed=recipe.defaults.seed)
        strategy = ProgramStrategy(name=f"{args.algorithm}-L{args.layer}", issue=recipe.name, algorithm=args.algorithm,
                                   layer=args.layer, direction=proposal.direction, strength=args.strength, gate=gate)
        program = Program([strategy])
        adapter = lower(program, new_adapter(loaded, samples, recipe))
        arms = {"per-token": adapter,
                "per-prompt": decided_per_prompt(loaded.model, loaded.tokenizer, program, adapter, prompts)}
        table = evaluate_refusal(loaded.model, loaded.tokenizer, arms, groups, {"target": "up", "neutral": "same"},
                                 max_new_tokens=args.max_new_tokens, progress=False, cache=cache)
        reports = gate_reports(loaded.model, loaded.tokenizer, adapter, [s.prompt for s in groups["target"]],
                               [s.prompt for s in groups["neutral"]], max_new_tokens=args.max_new_tokens,
                               progress=False)
        print(f"\n== anchor fitted to open on: {fire} ({', '.join(roles)} completions + prompt tails); "
              f"train recall {gate.stats['train_recall']:.2f}, train FPR {gate.stats['train_fpr']:.3f}")
        print(table.table_markdown())
        print(format_gate_reports(reports), flush=True)


if __name__ == "__main__":
    main()
