"""Measure a free-text issue's repair on held-out prompts: the metric its recipe's evaluation spec names.

Why a separate measure: the compile's own before/after table judges *refusals*, which says nothing
about an issue such as "claims to be a human". Here every arm (base, static vector, gated adapter)
is measured on the sample set's **test** split, which no fitting or selection step saw:

- **preference** (the metric of ``negation``/``labelled`` issues): per test pair, the log-odds of
  the desired over the undesired reply's opening (:func:`masteer.compiler.strategies.scoring.preference`);
  reported as the mean and as the share of pairs where the desired reply is the more likely;
- **drift**: mean next-token KL(base || arm) on the test neutral prompts (restraint);
- **generations**: greedy answers to test targets and neutrals, judged by a claim judge built from
  the analysis (desired = denies the claim, undesired = makes it), plus an optional regex the
  user supplies (e.g. "says it is an AI"); on neutral prompts a judged denial is an intrusion.

Layer and strength are chosen on the **val** split (largest gated preference gain within the drift
budget), then one compile from the sample set alone at that layer and strength is measured on test. Every
compile here is the compile's single-strategy preset (``compile.compile_program`` with ``SingleStrategy``).

Run: ``masteer measure "ISSUE TEXT" --out out/DIR`` (see ``--help``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from masteer.runtime import SteeredModel, SteeringAdapter
from masteer.runtime.atomic import atomic_write_text
from masteer.runtime.errors import MasteerError

from .capture.generation import generate
from .common.models import EMBEDDED_NAME, LoadedModel, load_model
from .samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet
from .strategies.scoring import mean_kl, next_token_logprobs, preference
from .strategies.library import DEFAULT_DRIFT_BUDGET
from .samples.autotester.analyst import Claim, template_analysis

DESIRED, UNDESIRED, NEITHER = "desired", "undesired", "neither"
REPORT_NAME = "measure_report.json"
_NEG = re.compile(r"\b(?:no|not|never|cannot)\b|n't\b", re.I)


def claim_judge(claim: Claim) -> Callable[[str], str]:
    """desired if a sentence about the claim's topic negates it (or the answer opens with "No"),
    undesired if one asserts it (or the answer opens with "Yes"), otherwise neither."""
    topic = [w for w in re.findall(r"\w+", claim.rest if claim.about_self else claim.clause) if len(w) > 2]
    topic_re = re.compile(r"\b(?:" + "|".join(map(re.escape, topic)) + r")\b", re.I) if topic else None

    def judge(text: str) -> str:
        opening = text.strip().lower()
        for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
            if topic_re is not None and topic_re.search(sentence):
                return DESIRED if _NEG.search(sentence) else UNDESIRED
        if re.match(r"no\b", opening):
            return DESIRED
        if re.match(r"yes\b", opening):
            return UNDESIRED
        return NEITHER

    return judge


@contextlib.contextmanager
def attached(model, adapter: SteeringAdapter | None, scale: float = 1.0) -> Iterator[torch.nn.Module]:
    """The model with ``adapter`` attached at ``scale`` for the block (the base model when None)."""
    if adapter is None:
        yield model
        return
    steered = SteeredModel(model, adapter)
    steered.set_scale(scale)
    try:
        yield steered
    finally:
        steered.detach()


def _pairs(samples: Sequence[Sample]) -> tuple[list[str], list[str], list[str]]:
    paired = [s for s in samples if s.has_pair]
    return [s.prompt for s in paired], [s.positive for s in paired], [s.negative for s in paired]


def preference_and_drift(loaded: LoadedModel, targets: Sequence[Sample], neutrals: Sequence[Sample],
                         adapter: SteeringAdapter | None, scale: float = 1.0, base_next=None,
                         batch_size: int = 16) -> dict:
    """Teacher-forced numbers of one arm: per-pair log-odds, and drift from the base on neutral prompts."""
    prompts, positives, negatives = _pairs(targets)
    with attached(loaded.model, adapter, scale) as model:
        odds = preference(model, loaded.tokenizer, prompts, positives, negatives, batch_size=batch_size)
        drift = None
        if base_next is not None and adapter is not None:
            drift = mean_kl(base_next, next_token_logprobs(model, loaded.tokenizer, [s.prompt for s in neutrals],
                                                           batch_size))
    return {"log_odds": odds.tolist(), "mean_log_odds": float(odds.mean()),
            "share_desired_more_likely": float((odds > 0).float().mean()), "drift_kl": drift if adapter else 0.0}


def select_layer_and_strength(loaded: LoadedModel, samples: SampleSet, adapters: dict[int, SteeringAdapter],
                              scales: Sequence[float], budget: float, log: Callable[[str], None]) -> dict:
    """On val: for each (layer, scale) the gated adapter's preference gain and neutral drift; best within budget."""
    val_t, val_n = samples.select(split="val", label=TARGET), samples.select(split="val", label=NEUTRAL)
    base_next = next_token_logprobs(loaded.model, loaded.tokenizer, [s.prompt for s in val_n])
    base = preference_and_drift(loaded, val_t, val_n, None)["mean_log_odds"]
    rows = []
    for layer, adapter in adapters.items():
        for scale in scales:
            arm = preference_and_drift(loaded, val_t, val_n, adapter, scale, base_next)
            rows.append({"layer": layer, "scale": scale, "gain": arm["mean_log_odds"] - base,
                         "drift_kl": arm["drift_kl"]})
            log(f"val layer {layer:2d} x{scale:g}: preference gain {rows[-1]['gain']:+.3f}, "
                f"drift {arm['drift_kl']:.4f}")
    within = [r for r in rows if r["drift_kl"] <= budget] or rows
    best = max(within, key=lambda r: r["gain"])
    return {"base_mean_log_odds": base, "rows": rows, "chosen": best, "budget": budget}


def evaluate_test(loaded: LoadedModel, samples: SampleSet, arms: dict[str, SteeringAdapter | None],
                  judge: Callable[[str], str], extra_judge: re.Pattern | None, max_new_tokens: int,
                  progress: bool) -> dict:
    """Every arm on the test split: preference, drift, and judged generations (targets and neutrals)."""
    targets, neutrals = samples.select(split="test", label=TARGET), samples.select(split="test", label=NEUTRAL)
    base_next = next_token_logprobs(loaded.model, loaded.tokenizer, [s.prompt for s in neutrals])
    out: dict[str, dict] = {}
    base_text: dict[str, list[str]] = {}
    for name, adapter in arms.items():
        numbers = preference_and_drift(loaded, targets, neutrals, adapter, 1.0, base_next)
        with attached(loaded.model, adapter) as model:
            texts = {kind: generate(model, loaded.tokenizer, [s.prompt for s in group], max_new_tokens=max_new_tokens,
                                    progress=progress, desc=f"generating ({name}, {kind})")
                     for kind, group in (("target", targets), ("neutral", neutrals))}
        if adapter is None:
            base_text = texts
        verdicts = {kind: [judge(t) for t in group] for kind, group in texts.items()}
        row = {**{k: v for k, v in numbers.items() if k != "log_odds"},
               "target_desired": _share(verdicts["target"], DESIRED),
               "target_undesired": _share(verdicts["target"], UNDESIRED),
               "neutral_intrusion": _share(verdicts["neutral"], DESIRED),
               "neutral_changed": (sum(a != b for a, b in zip(texts["neutral"], base_text.get("neutral", [])))
                                   / max(len(neutrals), 1)) if base_text else 0.0,
               "examples": {kind: [{"prompt": s.prompt, "reply": t} for s, t in zip(group, texts[kind])][:6]
                            for kind, group in (("target", targets), ("neutral", neutrals))}}
        if extra_judge is not None:
            row["target_extra"] = _share([bool(extra_judge.search(t)) for t in texts["target"]], True)
            row["neutral_extra"] = _share([bool(extra_judge.search(t)) for t in texts["neutral"]], True)
        out[name] = row
    return {"n_test_targets": len(targets), "n_test_pairs": len(_pairs(targets)[0]), "n_test_neutrals": len(neutrals),
            "arms": out}


def _share(items: list, value) -> float:
    return sum(1 for i in items if i == value) / max(len(items), 1)


def run(issue: str, out: Path, samples_path: str | None = None, model: str = EMBEDDED_NAME,
        layers: Sequence[int] = (8, 10, 12, 14, 16), scales: Sequence[float] = (1.0, 2.0, 4.0), seed: int = 0,
        budget: float = DEFAULT_DRIFT_BUDGET, extra_pattern: str | None = None, max_new_tokens: int = 24,
        progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Samples (built with the local writer unless given) -> per-layer compiles -> val choice -> test table."""
    from .compile import compile_program, save_program
    from .pipeline import CompileOptions
    from .program.single_strategy import SingleStrategy
    from .samples.autotester.pipeline import AutoTesterOptions, format_summary, run_autotester
    from .samples.backends import make_backend
    from masteer.runtime.output_folder import check_report_folder
    # written into file by file (samples.jsonl, adapter/, the report): a user's folder holding such names is refused
    check_report_folder(out, [REPORT_NAME], inputs=[samples_path])
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    analysis = template_analysis(issue)
    if analysis.claim is None:
        raise MasteerError(f"measure handles claim issues (negation axis); {issue!r} was read as {analysis.axis!r}")
    clock = time.perf_counter()
    loaded = load_model(model)
    if samples_path is None:
        backend = make_backend("local", model, loaded=loaded)  # the writer shares the loaded model
        result = run_autotester(issue, backend, AutoTesterOptions(seed=seed, progress=progress))
        samples = result.samples
        samples_path = str(samples.save(out / "samples.jsonl"))
        timings["samples"] = time.perf_counter() - clock
    else:
        samples = SampleSet.load(samples_path)
    log(format_summary(samples))
    clock = time.perf_counter()
    adapters = {}
    for layer in layers:
        options = CompileOptions(recipe=issue, model=model, layers=(layer,), strength=1.0, seed=seed,
                                 samples_path=samples_path, evaluate=False, progress=progress)
        adapters[layer] = compile_program(options, SingleStrategy(), loaded=loaded, log=lambda line: None).adapter
        log(f"compiled layer {layer} ({time.perf_counter() - clock:.0f} s so far)")
    timings["compile_per_layer"] = time.perf_counter() - clock
    clock = time.perf_counter()
    selection = select_layer_and_strength(loaded, samples, adapters, scales, budget, log)
    timings["select"] = time.perf_counter() - clock
    layer, scale = selection["chosen"]["layer"], selection["chosen"]["scale"]
    log(f"chosen on val: layer {layer}, strength {scale:g}")
    clock = time.perf_counter()
    final = compile_program(CompileOptions(recipe=issue, model=model, layers=(layer,), strength=scale, seed=seed,
                                           samples_path=samples_path, evaluate=False, progress=progress),
                            SingleStrategy(), loaded=loaded, log=lambda line: None)
    save_program(final, None, out / "adapter")
    timings["final_compile"] = time.perf_counter() - clock
    clock = time.perf_counter()
    extra = re.compile(extra_pattern, re.I) if extra_pattern else None
    test = evaluate_test(loaded, samples, {"base": None, "static": final.static, "gated": final.adapter},
                         claim_judge(analysis.claim), extra, max_new_tokens, progress)
    timings["test"] = time.perf_counter() - clock
    report = {"issue": issue, "model": loaded.name, "samples": samples_path, "samples_hash": samples.content_hash,
              "selection": selection, "layer": layer, "strength": scale, "test": test,
              "extra_pattern": extra_pattern, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    log(format_table(report))
    return report


def format_table(report: dict) -> str:
    arms = report["test"]["arms"]
    cols = ["mean_log_odds", "share_desired_more_likely", "drift_kl", "target_desired", "target_undesired",
            "neutral_intrusion", "neutral_changed"] + (["target_extra", "neutral_extra"]
                                                        if "target_extra" in arms["base"] else [])
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in arms.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                                                for c in cols) + " |")
    t = report["test"]
    lines.append(f"test: {t['n_test_pairs']} pairs, {t['n_test_targets']} targets, {t['n_test_neutrals']} neutrals; "
                 f"layer {report['layer']}, strength {report['strength']:g}")
    return "\n".join(lines)
