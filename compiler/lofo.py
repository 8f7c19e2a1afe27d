"""Leave one family out: refit a compiled program with a rewrite family withheld, test it on that family.

Why: the shipped program saw every rewrite family in fitting, so its test rows say how well it covers
families it was shown, not how it fares on a phrasing nobody wrote a rule for. This protocol withholds
one family at a time from every fitted parameter and tests on that family's held-out prompts (the
shift suite, :mod:`.evaluation.shift`), harmful and benign alike:

- **fitted without the family**: every candidate's direction (the library algorithm at its layer), every
  base anchor, the training applicability that specialises anchors, the specialised anchors, and the
  static baseline's direction. Training and validation samples of the family are withheld; so are the
  model's own answers to and decoys after the family's neutral prompts;
- **kept from the shipped compile** (the structure, chosen on a val split that held every family): which
  (algorithm, layer) pairs are candidates, which of them the program carries with which kind of anchor,
  each strategy's strength, and the static baseline's (algorithm, layer) and matched strength. Refitting
  the structure too would be a whole compile per family.

Beside each family's refusal rates sits its **separability ceiling** (:mod:`.separability`): per layer, an
oracle probe fitted on the training prompts *with* the family, scored on the family's held-out prompts,
against the AUROC of the anchor fitted without it. A family whose ceiling is high and whose withheld
anchor is low is a data problem (show the model that family); a low ceiling is the model's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from masteer.runtime import SteeringAdapter, check_compatible, host_layout
from masteer.runtime.errors import MasteerError

from .program.search import (CATCH, Candidate, ProgramContext, applicability_targets, fit_anchor, fit_anchors,
                             fit_catch_anchor, strategy_of)
from .program.anchors import DEFAULT_FPR_BUDGET
from .strategies.algorithms import get_algorithm
from .compile import TRAIN_APPLICABILITY
from .samples.builders import resolve_recipe
from .evaluation import ResultCache, evaluate_refusal
from .evaluation.shift import shift_samples
from .evaluation.gate_report import OPEN, program_opening, prompt_openings
from .common.batching import generation_batch
from .common.models import EMBEDDED_NAME, LoadedModel, load_model
from .pipeline import CompileOptions, anchor_negatives, capture_activations, fit_sequences, new_adapter
from .program.steering_program import Program, lower
from .samples.rewrites import FAMILIES
from .samples.sample_set import NEUTRAL, TARGET, SampleSet
from .strategies.scoring import HeldOutScorer
from .evaluation.separability import auroc, capture_prompt_ends, fit_probe, probe_scores, read_prompt_ends
from .strategies.library import strategy_adapter

ARMS = ("base", "static", "adaptive", "shipped")   # shipped: the compiled adapter, which saw the family


@dataclass
class FamilyRow:
    """One withheld family: its ceiling, the withheld anchors' separation and every arm's refusal rates."""
    family: str
    targets: int
    neutrals: int
    ceiling: dict[int, float]            # layer -> oracle probe AUROC (fitted with the family's train prompts)
    anchor_auroc: float                  # the program refitted without the family: max anchor score, AUROC
    shipped_anchor_auroc: float          # the shipped program (fitted with the family)
    anchor_recall: float                 # share of the family's harmful prompts the refitted program opens on
    anchor_fpr: float                    # ... and of its benign prompts
    refusal: dict[str, dict[str, float]] = field(default_factory=dict)   # arm -> {"target": r, "neutral": r}

    @property
    def ceiling_best(self) -> tuple[int, float]:
        layer = max(self.ceiling, key=lambda k: self.ceiling[k])
        return layer, self.ceiling[layer]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ceiling"] = {str(k): round(v, 4) for k, v in self.ceiling.items()}
        data["ceiling_best"] = {"layer": self.ceiling_best[0], "auroc": round(self.ceiling_best[1], 4)}
        return data


@dataclass
class LofoReport:
    adapter: str
    samples_hash: str
    rows: list[FamilyRow]
    settings: dict
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"adapter": self.adapter, "samples_hash": self.samples_hash, "settings": self.settings,
                "families": [r.to_dict() for r in self.rows],
                "timings_s": {k: round(v, 1) for k, v in self.timings.items()}}

    def markdown(self) -> str:
        lines = ["| family withheld | n harmful / benign | ceiling AUROC (layer) | anchor AUROC withheld / shipped "
                 "| anchor recall / FPR | harmful refusal: base / static / adaptive / shipped "
                 "| benign refusal: base / static / adaptive / shipped |", "|---" * 7 + "|"]
        for r in self.rows:
            layer, best = r.ceiling_best
            rates = {side: " / ".join(f"{100 * r.refusal[a][side]:.1f}%" for a in ARMS) for side in ("target", "neutral")}
            lines.append(f"| {r.family} | {r.targets} / {r.neutrals} | {best:.3f} (L{layer}) | "
                         f"{r.anchor_auroc:.3f} / {r.shipped_anchor_auroc:.3f} | {r.anchor_recall:.2f} / "
                         f"{r.anchor_fpr:.2f} | {rates['target']} | {rates['neutral']} |")
        return "\n".join(lines)


def _program_spec(report: dict) -> tuple[list[dict], list[tuple[str, int]], dict]:
    """From a compile report: the program's strategies, the gateable candidates and the static match."""
    program = report.get("program", {}).get("strategies")
    library = report.get("library")
    if not program or library is None:
        raise MasteerError("the compile report has no program or library rows: leave-one-family-out needs an "
                           "adaptive compile's adapter folder")
    candidates = [(r["algorithm"], int(r["layer"])) for r in library
                  if r.get("kept") and not r.get("error") and r.get("kind") == "neuron"]
    candidates += [(s["algorithm"], int(s["layer"])) for s in program if (s["algorithm"], int(s["layer"])) not in
                   candidates]   # a catch strategy may sit at a layer the library did not keep
    return program, candidates, report.get("static_match") or {}


def anchor_scores(adapter: SteeringAdapter, names: Sequence[str], mlp_in: dict[int, torch.Tensor]) -> torch.Tensor:
    """Per prompt, the largest anchor score a(x) of the named strategies, read from each strategy's "open" neuron:
    its pre-activation is kappa * a(x) (gated host, ``anchors._host_neuron``) or kappa * a(x) after its bias
    (plain host), so a(x) = (g.x + b) / kappa, unclamped (an AUROC needs the order, not the opening)."""
    scores = []
    for name in names:
        spec = adapter.strategy(name)
        layer_specs = adapter.layer_strategies(spec.layer, spec.kind)
        row = layer_specs.index(spec)
        block = adapter.block(spec.layer, spec.kind)
        pre = mlp_in[spec.layer] @ block["gate"][row].float()
        if "bias" in block:
            pre = pre + block["bias"][row].float()
        scores.append(pre / float(spec.metadata["anchor"]["kappa"]))
    return torch.stack(scores).max(0).values


def leave_one_family_out(adapter_dir: str | Path, model: str = EMBEDDED_NAME, families: Sequence[str] = FAMILIES,
                         batch_size: int = 16, max_new_tokens: int | None = None, progress: bool = True,
                         log: Callable[[str], None] = print, loaded: LoadedModel | None = None,
                         on_row: Callable[[LofoReport], None] | None = None) -> LofoReport:
    """The protocol of the module docstring for each of ``families``, on the compile in ``adapter_dir``;
    ``on_row`` sees the report so far after each family (a family takes minutes: save as you go)."""
    adapter_dir = Path(adapter_dir)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise MasteerError(f"unknown rewrite families {unknown}; known: {', '.join(FAMILIES)}")
    for name in ("samples.jsonl", "compile_report.json"):
        if not (adapter_dir / name).is_file():
            raise MasteerError(f"{adapter_dir / name} is missing: leave-one-family-out needs an adapter folder "
                               f"written by masteer-compile (its sample set and compile report)")
    samples = SampleSet.load(adapter_dir / "samples.jsonl")
    report = json.loads((adapter_dir / "compile_report.json").read_text())
    shipped = SteeringAdapter.load(adapter_dir)
    spec, candidate_pairs, static_match = _program_spec(report)
    if not any(s.family for s in samples.samples):
        raise MasteerError(f"{adapter_dir / 'samples.jsonl'} has no rewrite families (built before them): rebuild "
                           f"the sample set and recompile")
    recipe = resolve_recipe(report["recipe"])
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    loaded = loaded or load_model(model)
    check_compatible(loaded.model, shipped)
    seed = samples.meta.get("seed", recipe.defaults.seed)
    layers = tuple(report.get("layers") or recipe.defaults.layers)
    options = CompileOptions(recipe=report["recipe"], model=model, batch_size=batch_size, progress=progress)
    train, val = samples.select(split="train"), samples.select(split="val")
    seqs = fit_sequences(train + val, anchor_negatives(train, options, loaded, seed, log))
    acts = capture_activations(options, loaded, seqs, layers, samples, log)
    timings["capture"] = time.perf_counter() - clock

    clock = time.perf_counter()
    shift = shift_samples(samples)
    by_family = {f: [s for s in shift if s.family == f] for f in families}
    program_layers = sorted({int(s["layer"]) for s in spec})
    ends_train = capture_prompt_ends(loaded.model, loaded.tokenizer, [s.prompt for s in train], None, batch_size,
                                     progress)   # every layer: the ceiling is read at each
    wanted = [s for f in families for s in by_family[f]]
    ends_shift = capture_prompt_ends(loaded.model, loaded.tokenizer, [s.prompt for s in wanted], None, batch_size,
                                     progress)
    mlp_shift = _mlp_inputs_at_prompt_end(loaded, [s.prompt for s in wanted], program_layers, batch_size)
    timings["prompt_ends"] = time.perf_counter() - clock
    index = {id(s): k for k, s in enumerate(wanted)}
    y_train = torch.tensor([s.label == TARGET for s in train]).double()

    cache = ResultCache()
    directions = {"target": "up", "neutral": "same"}
    max_new_tokens = max_new_tokens or recipe.evaluation.max_new_tokens
    names = [s["name"] for s in spec]
    rows = []
    for family in families:
        clock = time.perf_counter()
        log(f"leave one family out: {family}")
        withheld = frozenset({family})
        fitted = _refit(loaded, samples, seqs, acts, recipe, seed, batch_size, spec, candidate_pairs, static_match,
                        withheld, progress)
        items = by_family[family]
        rows_idx = torch.tensor([index[id(s)] for s in items])
        labels = torch.tensor([s.label == TARGET for s in items])
        ceiling = {}
        for k in range(ends_train.shape[1]):
            ceiling[k] = auroc(probe_scores(ends_shift[rows_idx, k], fit_probe(ends_train[:, k], y_train)), labels)
        mlp = {layer: t[rows_idx] for layer, t in mlp_shift.items()}
        groups = {"target": [s for s in items if s.label == TARGET], "neutral": [s for s in items if s.label == NEUTRAL]}
        arms = {"base": None, "static": fitted["static"], "adaptive": fitted["adapter"], "shipped": shipped}
        result = evaluate_refusal(loaded.model, loaded.tokenizer, arms, groups, directions,
                                  max_new_tokens=max_new_tokens, batch_size=generation_batch(batch_size),
                                  progress=progress, cache=cache)
        opened = program_opening(prompt_openings(loaded.model, loaded.tokenizer, fitted["adapter"],
                                                 [s.prompt for s in items], batch_size))
        is_open = torch.tensor([v >= OPEN for v in opened])
        row = FamilyRow(family=family, targets=len(groups["target"]), neutrals=len(groups["neutral"]),
                        ceiling=ceiling,
                        anchor_auroc=auroc(anchor_scores(fitted["adapter"], names, mlp), labels),
                        shipped_anchor_auroc=auroc(anchor_scores(shipped, names, mlp), labels),
                        anchor_recall=float(is_open[labels].double().mean()),
                        anchor_fpr=float(is_open[~labels].double().mean()),
                        refusal={a: {side: round(result.rate(side, a), 4) for side in ("target", "neutral")}
                                 for a in ARMS})
        rows.append(row)
        timings[family] = time.perf_counter() - clock
        if on_row is not None:
            on_row(_report(adapter_dir, samples, rows, model, max_new_tokens, layers, timings))
        layer, best = row.ceiling_best
        log(f"  {family}: ceiling {best:.3f} (L{layer}), anchor AUROC {row.anchor_auroc:.3f} (shipped "
            f"{row.shipped_anchor_auroc:.3f}), harmful refusal adaptive {row.refusal['adaptive']['target']:.2f} "
            f"(shipped {row.refusal['shipped']['target']:.2f}), benign {row.refusal['adaptive']['neutral']:.2f}")
    return _report(adapter_dir, samples, rows, model, max_new_tokens, layers, timings)


def _report(adapter_dir: Path, samples: SampleSet, rows: list[FamilyRow], model: str, max_new_tokens: int,
            layers: Sequence[int], timings: dict[str, float]) -> LofoReport:
    settings = {"model": model, "max_new_tokens": max_new_tokens, "decoding": "greedy", "layers": list(layers),
                "shift_suite": "every test-split source item in every family (evaluation/shift.py)",
                "ceiling": "logistic probe per layer on the train split's last prompt tokens, all families"}
    return LofoReport(adapter=str(adapter_dir), samples_hash=samples.content_hash, rows=list(rows),
                      settings=settings, timings=dict(timings))


def _refit(loaded: LoadedModel, samples: SampleSet, seqs, acts, recipe, seed: int, batch_size: int,
           spec: Sequence[dict], candidate_pairs: Sequence[tuple[str, int]], static_match: dict,
           withheld: frozenset[str], progress: bool) -> dict:
    """The shipped structure refitted without ``withheld`` (module docstring): program, adapter, static arm."""
    inputs = seqs.fit_inputs(acts, withheld=withheld)
    proposals = {(a, layer): get_algorithm(a).fit(inputs, layer) for a, layer in candidate_pairs}
    candidates = [Candidate(name=f"{recipe.name}-{a}-L{layer}", issue=recipe.name, proposal=p,
                            strength=recipe.defaults.strength) for (a, layer), p in proposals.items()]
    train = [s for s in samples.select(split="train") if s.family not in withheld]
    items, ids = applicability_targets(train, limit=TRAIN_APPLICABILITY)
    make = lambda: new_adapter(loaded, samples, recipe)   # noqa: E731
    ctx = ProgramContext(acts=acts, sequences=seqs.samples, roles=seqs.roles, host_form=host_layout(loaded.model).form,
                         seed=seed, new_adapter=make, model=loaded.model,
                         train_scorer=HeldOutScorer(loaded.model, loaded.tokenizer, items, [], batch_size,
                                                    replay_layers=sorted({layer for _, layer in candidate_pairs})),
                         train_ids=ids, val_scorer=None, val_ids=[], budget=float("inf"), withheld=withheld,
                         anchor_ids=[s.id for s in train if s.label == TARGET])
    by_name = {c.name: c for c in candidates}
    missing = [s["name"] for s in spec if s["name"].removesuffix(f"-{CATCH}") not in by_name]
    if missing:
        raise MasteerError(f"program strategies {missing} are not among the library's gateable candidates")
    # A specialised anchor is fitted from training applicability, which compares every candidate: only then is
    # the whole anchor stage rerun; base anchors need nothing but the training tokens.
    specialised = any(s.get("gate", {}).get("specialised") for s in spec)
    fitted_on = fit_anchors(ctx, candidates, progress=progress).fitted_on if specialised else {}
    base_sets = (ctx.sequences_of(set(ctx.anchor_ids), "train"), ctx.neutral_sequences("train"))
    strategies = []
    for s in spec:
        if s.get("gate", {}).get("anchor") == CATCH:
            c = replace(by_name[s["name"].removesuffix(f"-{CATCH}")], name=s["name"])
            strategies.append(strategy_of(c, fit_catch_anchor(ctx, c.proposal.layer), float(s["strength"])))
            continue
        c = by_name[s["name"]]
        kind = "specialised" if s.get("gate", {}).get("specialised") else "base"
        sets = fitted_on.get(c.name, {}).get(kind, base_sets)
        budget = float(s.get("gate", {}).get("fpr_budget", DEFAULT_FPR_BUDGET))
        strategies.append(strategy_of(c, fit_anchor(ctx, c.proposal.layer, *sets, fpr_budget=budget),
                                      float(s["strength"])))
    program = Program(strategies)
    adapter = lower(program, make())
    static = None
    if static_match.get("strategy"):
        algorithm, _, layer = static_match["strategy"].rpartition("-L")
        proposal = get_algorithm(algorithm).fit(inputs, int(layer))
        static = strategy_adapter(make(), proposal)
        for st in static.strategies:
            st.strength = float(static_match["chosen_strength"])
    return {"program": program, "adapter": adapter, "static": static}


def _mlp_inputs_at_prompt_end(loaded: LoadedModel, prompts: Sequence[str], layers: Sequence[int],
                              batch_size: int) -> dict[int, torch.Tensor]:
    """The MLP input (what a gate reads) at each prompt's last token, at ``layers``."""
    from masteer.runtime.hosts import mlp_module
    modules = [mlp_module(loaded.model, layer) for layer in layers]
    read = read_prompt_ends(loaded.model, loaded.tokenizer, prompts, modules, inputs=True, batch_size=batch_size,
                            progress=False)
    return {layer: read[:, k] for k, layer in enumerate(layers)}
