"""A new algorithm can come from another package, through the entry-point group ``masteer.algorithms``.

The plugin (``plugin_fixture/masteer_toy_plugin.py``) is "installed" the way pip would leave it, as a
dist-info folder with an ``entry_points.txt``, in a temporary directory put on ``sys.path``; nothing in
masteer's own files changes. The test then uses it through the public registry and through the
compile's ``fit_layer``, and removes every trace afterwards (sys.path, sys.modules, the registry).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from masteer.compiler.capture.activations import COMPLETION, PROMPT_BODY, PROMPT_TAIL, Activations
from masteer.compiler.strategies.algorithms import available, get_algorithm, registry
from masteer.compiler.pipeline import fit_layer, fit_sequences
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample
from masteer.runtime.errors import MasteerError
from masteer.runtime.hosts import GATED

FIXTURE = Path(__file__).resolve().parent / "plugin_fixture"
MODULE = "masteer_toy_plugin"
HIDDEN, LAYERS = 16, (2, 5)


@contextlib.contextmanager
def installed_plugin(root: Path):
    """A dist-info folder declaring ``toy`` under ``masteer.algorithms``, on sys.path while the block runs."""
    dist = root / "masteer_toy_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: masteer-toy-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ntoy = {MODULE}:ToyMedianDifference\n")
    saved_path, saved_registry = list(sys.path), dict(registry._REGISTRY)
    sys.path[:0] = [str(root), str(FIXTURE)]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved_registry)
        sys.modules.pop(MODULE, None)


def synthetic_compile_inputs(seed: int = 0):
    """Samples as the compile sees them and matching captured activations, without a model.

    Target samples are paired (a positive and a negative completion); neutral ones are bare prompts.
    Positive completions differ from negative ones along ``planted`` (the same in every pair, with one
    outlier pair); target-prompt tokens differ from neutral ones along ``gate_axis``, so a gate can be fitted.
    """
    gen = torch.Generator().manual_seed(seed)
    targets = [Sample(id=f"t{i}", prompt=f"harmful {i}", label=TARGET, split="train", positive="No.",
                      negative="Sure.") for i in range(12)]
    neutrals = [Sample(id=f"n{i}", prompt=f"benign {i}", label=NEUTRAL, split="train") for i in range(12)]
    seqs = fit_sequences(targets + neutrals)
    n = len(seqs.items)
    planted = torch.zeros(HIDDEN)
    planted[:4] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    gate_axis = torch.zeros(HIDDEN)
    gate_axis[-1] = 1.0
    resid = torch.randn(n, len(LAYERS), HIDDEN, generator=gen)
    for i, role in enumerate(seqs.roles):
        if role == "negative":  # negative completions: the positive one's residual minus the planted difference
            resid[i] = resid[i - 1] - planted
    outlier = seqs.roles.index("positive")
    resid[outlier] += 100.0  # one wild pair: a median ignores it, a mean would not
    tokens, owners, kinds = [], [], []
    for i, sample in enumerate(seqs.samples):
        for kind in (PROMPT_BODY, PROMPT_TAIL, COMPLETION):
            x = torch.randn(4, len(LAYERS), HIDDEN, generator=gen) * 0.3 + 1.0  # normalised states have a mean
            if sample.label == TARGET and kind != PROMPT_BODY:
                x += 3.0 * gate_axis
            tokens.append(x)
            owners.append(torch.full((4,), i))
            kinds.append(torch.full((4,), kind))
    acts = Activations(layers=LAYERS, resid_completion_mean=resid, resid_last_prompt=resid.clone(),
                       resid_last_token=resid.clone(), mlp_in_last_prompt=resid.clone(),
                       mlp_in_tokens=torch.cat(tokens), token_sequence=torch.cat(owners), token_kind=torch.cat(kinds))
    return acts, seqs, planted


def test_a_plugin_algorithm_is_found_listed_and_fitted_through_the_compile(tmp_path):
    assert "toy" not in available()
    with pytest.raises(MasteerError, match="unknown algorithm 'toy'"):
        get_algorithm("toy")

    with installed_plugin(tmp_path):
        assert MODULE not in sys.modules        # loaded lazily, when asked for
        algorithm = get_algorithm("toy", scale=2.0)
        assert type(algorithm).__module__ == MODULE and algorithm.scale == 2.0
        names = available()
        assert "toy" in names and "mean_difference" in names and "pca" in names

        acts, seqs, planted = synthetic_compile_inputs()
        for layer in LAYERS:
            proposal, gate = fit_layer(acts, seqs, layer, "toy", GATED, seed=0)
            assert proposal.algorithm == "toy" and proposal.layer == layer
            assert torch.allclose(proposal.direction, planted, atol=1e-6)  # the median, untouched by the outlier
            assert proposal.metadata == {"pairs": 12, "scale": 1.0}
            assert gate.stats["train_recall"] >= 0.9 and gate.stats["train_fpr"] <= 0.05
        mean = fit_layer(acts, seqs, LAYERS[0], "mean_difference", GATED, seed=0)[0].direction
        assert not torch.allclose(mean, planted, atol=1e-3)  # the same data does tell the two apart

    assert "toy" not in available()
    assert str(tmp_path) not in sys.path and str(FIXTURE) not in sys.path and MODULE not in sys.modules
