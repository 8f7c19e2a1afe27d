"""Benchmark: the whole algorithm library costs little more than one algorithm, because capture is shared.

Measures, on one model and one recipe's training split, over the recipe's candidate layers:

- the capture pass (the only model pass of fitting), fresh, into a temporary activation store;
- the same capture again, served from the store (no model pass);
- fitting one algorithm (``mean_difference``) at every layer, with its held-out layer scores;
- fitting every registered algorithm at every layer, with their layer scores.

and reports ``(capture + fit all) / (capture + fit one)``, the cost of the library relative to a
single-algorithm compile (issue goal: at most 1.3). Strength calibration is not part of it: it runs
the model once per kept strategy and strength, whatever the capture does; its cost is in the
``masteer strategies`` timings.

    .venv/bin/python tools/bench_capture_once.py [--recipe refusal] [--model smollm2-135m-instruct] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from masteer.compiler.capture.activation_store import ActivationStore
from masteer.compiler.strategies.algorithms import available
from masteer.compiler.samples.builders import build_samples
from masteer.compiler.common.models import load_model
from masteer.compiler.pipeline import fit_sequences
from masteer.compiler.samples.recipes import load_recipe
from masteer.compiler.strategies.library import layer_scores, propose_all


def fit_and_score(inputs, val_pairs, layers, algorithms) -> tuple[float, int]:
    start = time.perf_counter()
    proposals = propose_all(inputs, layers, algorithms)
    for _, _, proposal, _ in proposals:
        if proposal is not None:
            layer_scores(proposal, inputs.activations, *val_pairs,
                         position=proposal.metadata.get("position", "completion_mean"))
    return time.perf_counter() - start, sum(p is not None for _, _, p, _ in proposals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="refusal")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    loaded = load_model(args.model)
    samples = build_samples(recipe)
    layers = recipe.defaults.layers
    seqs = fit_sequences(samples.select(split="train") + samples.select(split="val"))
    with tempfile.TemporaryDirectory() as root:
        store = ActivationStore(root)
        start = time.perf_counter()
        acts = store.capture(loaded.model, loaded.tokenizer, seqs.items, layers, progress=False)
        capture_s = time.perf_counter() - start
        start = time.perf_counter()
        acts = store.capture(loaded.model, loaded.tokenizer, seqs.items, layers, progress=False)
        stored_s = time.perf_counter() - start
        assert store.hits == 1
        inputs = seqs.fit_inputs(acts)
        val_pairs = (seqs.indices("positive", paired=True, split="val"),
                     seqs.indices("negative", paired=True, split="val"))
        one_s, one_n = fit_and_score(inputs, val_pairs, layers, ["mean_difference"])
        all_s, all_n = fit_and_score(inputs, val_pairs, layers, available())
    result = {
        "model": loaded.name, "recipe": recipe.name, "layers": list(layers), "sequences": len(seqs.items),
        "tokens": int(acts.mlp_in_tokens.shape[0]), "algorithms": available(),
        "capture_s": round(capture_s, 2), "stored_capture_s": round(stored_s, 2),
        "fit_one_s": round(one_s, 2), "fit_all_s": round(all_s, 2), "strategies_one": one_n, "strategies_all": all_n,
        "ratio_all_vs_one": round((capture_s + all_s) / (capture_s + one_s), 3),
        # what the library would cost if every algorithm ran its own capture, as separate tools do
        "ratio_if_each_captured_again": round((len(available()) * capture_s + all_s) / (capture_s + one_s), 3),
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        from masteer.runtime.atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
