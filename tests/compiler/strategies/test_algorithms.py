"""The algorithm library on synthetic activations with planted directions.

Every table of a synthetic ``Activations`` gets its own known direction (per residual position and per
layer), so a test can tell not only that an algorithm finds *a* direction but that it read the position
and layer it was asked to. Noise and a shared per-prompt component (what the two completions of one
prompt have in common) are added on top, as in real captures.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from masteer.compiler.capture.activations import COMPLETION, PROMPT_BODY, Activations
from masteer.compiler.strategies.algorithms import Algorithm, FitInputs, available, get_algorithm
from masteer.compiler.strategies.algorithms.lda import LDAArgs, ledoit_wolf_shrinkage
from masteer.compiler.strategies.algorithms.sparse import SparseArgs
from masteer.runtime.errors import MasteerError

HIDDEN = 32
LAYERS = (1, 3)
NEW = ("pca", "logistic_probe", "lda", "directional_ablation", "rotation", "sparse")
DENSE = ("pca", "logistic_probe", "lda", "directional_ablation", "rotation")  # whose output should align with the plant
KINDS = {"pca": "neuron", "logistic_probe": "neuron", "lda": "neuron", "sparse": "neuron",
         "directional_ablation": "ablation", "rotation": "rotation", "mean_difference": "neuron"}


def unit_vector(gen: torch.Generator, hidden: int = HIDDEN) -> torch.Tensor:
    v = torch.randn(hidden, generator=gen)
    return v / v.norm()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


class Synthetic:
    """Paired sequences 0..n-1 (positive) and n..2n-1 (negative), neutral prompts after them.

    ``planted[(position, layer)]`` is the unit direction along which positive completions differ from
    negative ones in that table; at ``last_prompt`` the two completions of a prompt share the residual
    (causal attention), and target prompts differ from neutral ones along ``planted[("prompts", layer)]``.
    """

    def __init__(self, pairs: int = 80, neutral: int = 40, hidden: int = HIDDEN, seed: int = 0,
                 noise: float = 0.3, shift: float = 2.0, spread: float = 0.5, prompt_scale: float = 3.0,
                 planted: dict | None = None):
        gen = torch.Generator().manual_seed(seed)
        self.pairs, self.hidden = pairs, hidden
        n = 2 * pairs + neutral
        self.planted = {(pos, layer): unit_vector(gen, hidden)
                        for pos in ("completion_mean", "last_token", "prompts") for layer in LAYERS}
        self.planted.update(planted or {})
        tables = {pos: torch.zeros(n, len(LAYERS), hidden) for pos in ("completion_mean", "last_prompt", "last_token")}
        for li, layer in enumerate(LAYERS):
            prompt = prompt_scale * torch.randn(pairs, hidden, generator=gen)            # what a pair shares
            neutral_prompt = prompt_scale * torch.randn(neutral, hidden, generator=gen)
            target_offset = 2.0 * self.planted[("prompts", layer)]
            tables["last_prompt"][:pairs, li] = prompt + target_offset
            tables["last_prompt"][pairs:2 * pairs, li] = prompt + target_offset
            tables["last_prompt"][2 * pairs:, li] = neutral_prompt
            for pos in ("completion_mean", "last_token"):
                amount = shift + spread * (2 * torch.rand(pairs, 1, generator=gen) - 1)  # per-pair strength
                tables[pos][:pairs, li] = (prompt + amount * self.planted[(pos, layer)]
                                           + noise * torch.randn(pairs, hidden, generator=gen))
                tables[pos][pairs:2 * pairs, li] = prompt + noise * torch.randn(pairs, hidden, generator=gen)
            tables["last_token"][2 * pairs:, li] = neutral_prompt  # prompt-only sequences end at their prompt
        tokens_per_seq = 3
        self.acts = Activations(
            layers=LAYERS, resid_completion_mean=tables["completion_mean"], resid_last_prompt=tables["last_prompt"],
            resid_last_token=tables["last_token"], mlp_in_last_prompt=tables["last_prompt"].clone(),
            mlp_in_tokens=torch.randn(n * tokens_per_seq, len(LAYERS), hidden, generator=gen),
            token_sequence=torch.arange(n).repeat_interleave(tokens_per_seq),
            token_kind=torch.tensor([PROMPT_BODY, COMPLETION, COMPLETION] * n))
        self.inputs = FitInputs(activations=self.acts, paired=list(range(pairs)),
                                paired_negative=list(range(pairs, 2 * pairs)),
                                target_prompts=list(range(2 * pairs)),
                                neutral_prompts=list(range(2 * pairs, n)))

    def mean_difference(self, position: str, layer: int) -> torch.Tensor:
        return (self.acts.residual(position, self.inputs.paired, layer).double().mean(0)
                - self.acts.residual(position, self.inputs.paired_negative, layer).double().mean(0))


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    return Synthetic()


# ----------------------------------------------------------------------------- registry and interface
def test_every_algorithm_is_registered_and_implements_the_protocol():
    names = available()
    assert set(NEW) | {"mean_difference"} <= set(names)
    for name in NEW:
        algorithm = get_algorithm(name)
        assert isinstance(algorithm, Algorithm)
        assert type(algorithm).name == name


def test_hyperparameters_are_typed_args_passed_as_keyword_arguments():
    sparse = get_algorithm("sparse", k=3, position="last_token")
    assert sparse.args == SparseArgs(position="last_token", k=3)
    assert get_algorithm("lda", args=LDAArgs(shrinkage=0.5)).args.shrinkage == 0.5
    with pytest.raises(MasteerError, match=r"sparse: unknown argument\(s\) kk; accepted: position, k"):
        get_algorithm("sparse", kk=3)
    with pytest.raises(MasteerError, match="pca: unknown residual position 'middle'"):
        get_algorithm("pca", position="middle")
    with pytest.raises(MasteerError, match="sparse: k must be a positive integer"):
        get_algorithm("sparse", k=0)
    with pytest.raises(MasteerError, match="lda: shrinkage must be"):
        get_algorithm("lda", shrinkage=1.5)
    with pytest.raises(MasteerError, match="logistic_probe: l2 must be >= 0"):
        get_algorithm("logistic_probe", l2=-1.0)
    with pytest.raises(MasteerError, match="rotation: angle_degrees must be in"):
        get_algorithm("rotation", angle_degrees=0)
    with pytest.raises(MasteerError, match="either args= or keyword arguments"):
        get_algorithm("lda", args=LDAArgs(), shrinkage=0.1)


# ----------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("name", DENSE)
@pytest.mark.parametrize("layer", LAYERS)
def test_dense_algorithms_recover_the_planted_direction_at_the_layer_asked(synthetic, name, layer):
    proposal = get_algorithm(name).fit(synthetic.inputs, layer)
    assert proposal.algorithm == name and proposal.layer == layer
    assert proposal.direction.shape == (HIDDEN,) and proposal.direction.dtype == torch.float32
    planted = synthetic.planted[("completion_mean", layer)]
    other_layer = synthetic.planted[("completion_mean", next(lay for lay in LAYERS if lay != layer))]
    assert cosine(proposal.direction, planted) >= 0.9
    assert abs(cosine(proposal.direction, other_layer)) < 0.5


@pytest.mark.parametrize("name", DENSE)
def test_dense_algorithms_read_the_position_asked(synthetic, name):
    proposal = get_algorithm(name, position="last_token").fit(synthetic.inputs, 3)
    assert proposal.metadata["position"] == "last_token"
    assert cosine(proposal.direction, synthetic.planted[("last_token", 3)]) >= 0.9
    assert abs(cosine(proposal.direction, synthetic.planted[("completion_mean", 3)])) < 0.5


@pytest.mark.parametrize("name", NEW)
def test_fits_are_deterministic_and_return_the_right_kind(synthetic, name):
    first = get_algorithm(name).fit(synthetic.inputs, 3)
    second = get_algorithm(name).fit(synthetic.inputs, 3)
    assert torch.equal(first.direction, second.direction)
    assert first.metadata == second.metadata
    assert first.kind == KINDS[name]
    json.dumps(first.metadata)  # the metadata goes into adapter_config.json


@pytest.mark.parametrize("name", ("pca", "logistic_probe", "lda"))
def test_unit_direction_is_scaled_to_the_mean_difference_projection(synthetic, name):
    """d = (u . m) u: the component of the mean difference along the fitted axis, pointing negative -> positive."""
    d = get_algorithm(name).fit(synthetic.inputs, 3).direction.double()
    m = synthetic.mean_difference("completion_mean", 3)
    u = d / d.norm()
    assert float(u @ m) > 0
    assert d.norm().item() == pytest.approx(float(u @ m), rel=1e-5)
    # on this clean data the axis is the mean difference's, so the scale is about its norm
    assert d.norm().item() == pytest.approx(m.norm().item(), rel=0.1)


def test_directional_ablation_and_rotation_give_unit_directions(synthetic):
    m = synthetic.mean_difference("completion_mean", 3)
    for name in ("directional_ablation", "rotation"):
        d = get_algorithm(name).fit(synthetic.inputs, 3).direction.double()
        assert d.norm().item() == pytest.approx(1.0, abs=1e-6)
        assert cosine(d, m) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", NEW)
def test_no_pairs_is_an_error_naming_the_algorithm(synthetic, name):
    inputs = FitInputs(activations=synthetic.acts, paired=[], paired_negative=[],
                       target_prompts=synthetic.inputs.target_prompts, neutral_prompts=synthetic.inputs.neutral_prompts)
    with pytest.raises(MasteerError, match=rf"^{name}: no paired samples"):
        get_algorithm(name).fit(inputs, 3)


@pytest.mark.parametrize("name", NEW)
def test_misaligned_pairs_are_an_error(synthetic, name):
    inputs = FitInputs(activations=synthetic.acts, paired=[0, 1, 2], paired_negative=[80, 81],
                       target_prompts=[0], neutral_prompts=[170])
    with pytest.raises(MasteerError, match=rf"^{name}: 3 positive but 2 negative"):
        get_algorithm(name).fit(inputs, 3)


@pytest.mark.parametrize("name", NEW)
def test_a_layer_that_was_not_captured_is_a_key_error_naming_it(synthetic, name):
    with pytest.raises(KeyError, match=r"layer 7 was not captured; captured layers: \[1, 3\]"):
        get_algorithm(name).fit(synthetic.inputs, 7)


@pytest.mark.parametrize("name", NEW)
def test_identical_completions_give_no_direction_and_say_so(synthetic, name):
    """At the last prompt token both completions of a prompt have the same residual: nothing to fit."""
    with pytest.raises(MasteerError, match=rf"^{name}: .*(zero|coincide|identical)"):
        get_algorithm(name, position="last_prompt").fit(synthetic.inputs, 3)


# ----------------------------------------------------------------------------- pca
def test_pca_centering_is_repengs_convention_and_loses_a_uniform_shift():
    """Uncentred PCA (default) keeps the shared shift; centred PCA (repeng) needs pair-to-pair variation."""
    uniform = Synthetic(spread=0.0, seed=1)   # every pair shows the behaviour equally strongly
    varied = Synthetic(spread=1.5, seed=1)    # pairs show it by different amounts
    planted = uniform.planted[("completion_mean", 3)]
    assert cosine(get_algorithm("pca").fit(uniform.inputs, 3).direction, planted) >= 0.95
    assert abs(cosine(get_algorithm("pca", center=True).fit(uniform.inputs, 3).direction, planted)) < 0.5
    centred = get_algorithm("pca", center=True).fit(varied.inputs, 3)
    assert cosine(centred.direction, planted) >= 0.9  # and signed negative -> positive
    assert 0 < centred.metadata["explained_variance_ratio"] <= 1


def test_pca_center_needs_two_pairs(synthetic):
    inputs = FitInputs(activations=synthetic.acts, paired=[0], paired_negative=[80], target_prompts=[0],
                       neutral_prompts=[170])
    with pytest.raises(MasteerError, match="pca: center=True needs at least 2 pairs"):
        get_algorithm("pca", center=True).fit(inputs, 3)
    residual = synthetic.acts.residual
    one_difference = residual("completion_mean", [0], 3) - residual("completion_mean", [80], 3)
    assert cosine(get_algorithm("pca").fit(inputs, 3).direction, one_difference[0]) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- probe and lda
def anisotropic(seed: int = 2, pairs: int = 1000) -> tuple[Synthetic, torch.Tensor]:
    """Class means differ along v + n, but n is also the direction of large within-class variance.

    The mean difference then points half along n (cosine with v about 0.7); the separating direction
    is v (cosine about 1 with the Bayes-optimal discriminant), which a discriminative method should find.
    """
    syn = Synthetic(pairs=pairs, seed=seed, shift=0.0, spread=0.0, noise=0.2, prompt_scale=0.5)
    gen = torch.Generator().manual_seed(seed + 100)
    v = unit_vector(gen)
    n = unit_vector(gen)
    n = n - (n @ v) * v
    n = n / n.norm()
    li = LAYERS.index(3)
    for rows, offset in ((syn.inputs.paired, 1.0), (syn.inputs.paired_negative, 0.0)):
        loud = 4.0 * torch.randn(len(rows), 1, generator=gen)
        syn.acts.resid_completion_mean[rows, li] += offset * (v + n) + loud * n
    return syn, v


def test_lda_and_probe_find_the_separating_direction_where_the_mean_difference_does_not():
    syn, v = anisotropic()
    assert cosine(get_algorithm("mean_difference").fit(syn.inputs, 3).direction, v) < 0.8
    assert cosine(get_algorithm("lda").fit(syn.inputs, 3).direction, v) >= 0.95
    assert cosine(get_algorithm("logistic_probe").fit(syn.inputs, 3).direction, v) >= 0.95


def test_lda_shrinkage_interpolates_from_lda_to_the_mean_difference():
    syn, v = anisotropic()
    m = syn.mean_difference("completion_mean", 3)
    full = get_algorithm("lda", shrinkage=1.0).fit(syn.inputs, 3)
    assert full.metadata["shrinkage"] == 1.0
    assert cosine(full.direction, m) == pytest.approx(1.0, abs=1e-6)
    auto = get_algorithm("lda").fit(syn.inputs, 3)
    assert 0 < auto.metadata["shrinkage"] < 0.1  # 2000 samples in 32 dimensions: little to shrink
    half = get_algorithm("lda", shrinkage=0.5).fit(syn.inputs, 3)
    none = get_algorithm("lda", shrinkage=0.0).fit(syn.inputs, 3)
    assert cosine(full.direction, v) < 0.8
    assert cosine(half.direction, v) >= 0.95 and cosine(none.direction, v) >= 0.95


def test_ledoit_wolf_shrinkage_grows_as_samples_get_fewer():
    gen = torch.Generator().manual_seed(5)
    scales = torch.linspace(0.3, 3.0, 16, dtype=torch.float64)  # anisotropic: the identity is not the truth
    many = torch.randn(4000, 16, generator=gen, dtype=torch.float64) * scales
    few = many[:12]
    lw_many, lw_few = ledoit_wolf_shrinkage(many - many.mean(0)), ledoit_wolf_shrinkage(few - few.mean(0))
    assert lw_many < 0.05 < lw_few <= 1
    isotropic = torch.randn(4000, 16, generator=gen, dtype=torch.float64)
    assert ledoit_wolf_shrinkage(isotropic - isotropic.mean(0)) > 0.5  # the identity is the truth: shrink to it


def test_probe_separates_the_training_classes():
    syn = Synthetic(prompt_scale=0.2, noise=0.1)  # small within-class spread: the classes are linearly separable
    proposal = get_algorithm("logistic_probe").fit(syn.inputs, 3)
    assert proposal.metadata["train_accuracy"] == 1.0
    assert proposal.metadata["iterations"] >= 1
    strong = get_algorithm("logistic_probe", l2=1e4).fit(syn.inputs, 3)  # strong L2 tends to the mean difference axis
    m = syn.mean_difference("completion_mean", 3)
    assert cosine(strong.direction, m) >= 0.999 > cosine(proposal.direction, m)


# ----------------------------------------------------------------------------- directional ablation
def test_directional_ablation_prompts_contrast_is_arditis_recipe(synthetic):
    clean = Synthetic(prompt_scale=1.0)  # unpaired prompts do not cancel their content: keep it small
    proposal = get_algorithm("directional_ablation", contrast="prompts").fit(clean.inputs, 1)
    assert proposal.metadata["position"] == "last_prompt" and proposal.metadata["contrast"] == "prompts"
    assert cosine(proposal.direction, clean.planted[("prompts", 1)]) >= 0.9
    assert abs(cosine(proposal.direction, clean.planted[("completion_mean", 1)])) < 0.5
    assert proposal.direction.norm().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(MasteerError, match="contrast='prompts' reads prompts"):
        get_algorithm("directional_ablation", contrast="prompts", position="completion_mean")
    no_neutral = FitInputs(activations=synthetic.acts, paired=synthetic.inputs.paired,
                           paired_negative=synthetic.inputs.paired_negative,
                           target_prompts=synthetic.inputs.target_prompts, neutral_prompts=[])
    with pytest.raises(MasteerError, match="directional_ablation: no neutral prompt sequences"):
        get_algorithm("directional_ablation", contrast="prompts").fit(no_neutral, 1)


# ----------------------------------------------------------------------------- rotation
def rotate_toward(x: torch.Tensor, d: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each row of ``x`` toward the unit ``d`` by ``degrees`` in span(x, d), keeping its norm."""
    norm = x.norm(dim=1, keepdim=True)
    a = x / norm
    along = (a @ d)[:, None]
    ortho = a - along * d
    ortho = ortho / ortho.norm(dim=1, keepdim=True)
    phi = torch.arccos(along.clamp(-1, 1)) - math.radians(degrees)
    return norm * (torch.cos(phi) * d + torch.sin(phi) * ortho)


def test_rotation_fits_the_angle_that_separates_the_pairs():
    syn = Synthetic(pairs=200, seed=3)
    li = LAYERS.index(3)
    gen = torch.Generator().manual_seed(9)
    d = unit_vector(gen)
    negative = torch.randn(200, HIDDEN, generator=gen) * 2.0 - 1.5 * d  # leaning away from d
    syn.acts.resid_completion_mean[syn.inputs.paired_negative, li] = negative
    syn.acts.resid_completion_mean[syn.inputs.paired, li] = rotate_toward(negative.double(), d.double(), 20.0).float()
    proposal = get_algorithm("rotation").fit(syn.inputs, 3)
    assert cosine(proposal.direction, d) >= 0.9
    assert proposal.metadata["angle_source"] == "fitted"
    assert proposal.metadata["angle_degrees"] == pytest.approx(20.0, abs=1.5)
    assert proposal.metadata["positive_projection"] > proposal.metadata["negative_projection"]
    given = get_algorithm("rotation", angle_degrees=45.0).fit(syn.inputs, 3)
    assert given.metadata["angle_degrees"] == 45.0 and given.metadata["angle_source"] == "given"
    assert given.metadata["fitted_angle_degrees"] == proposal.metadata["fitted_angle_degrees"]


def test_rotation_reports_selective_steerings_opposite_sign_criterion():
    # class means straddling the origin along d, then both moved to its positive side
    syn = Synthetic(seed=4, shift=2.0, spread=0.0, noise=0.1)
    li = LAYERS.index(3)
    d = syn.planted[("completion_mean", 3)]
    prompt_shift = syn.acts.resid_completion_mean[syn.inputs.paired_negative, li].mean(0)
    straddle = syn.acts.resid_completion_mean.clone()
    straddle[:, li] -= prompt_shift + 1.0 * d  # negative mean at -1 along d, positive at about +1
    syn.acts.resid_completion_mean = straddle
    assert get_algorithm("rotation").fit(syn.inputs, 3).metadata["opposite_signs"] is True
    syn.acts.resid_completion_mean[:, li] += 5.0 * d  # both means now on the positive side
    assert get_algorithm("rotation").fit(syn.inputs, 3).metadata["opposite_signs"] is False


def test_rotation_refuses_to_fit_an_angle_when_positives_are_not_closer_to_the_direction():
    syn = Synthetic(seed=6)
    li = LAYERS.index(3)
    d = syn.planted[("completion_mean", 3)]
    away = syn.planted[("last_token", 3)] - (syn.planted[("last_token", 3)] @ d) * d
    # everything leans toward d, and the positives are pushed far out along an orthogonal axis, half of them
    # each way: the mean difference is unchanged, but the positives are farther from d in angle than the negatives
    syn.acts.resid_completion_mean[:, li] += 10.0 * d
    signs = torch.tensor([1.0, -1.0]).repeat(syn.pairs // 2)[:, None]
    syn.acts.resid_completion_mean[syn.inputs.paired, li] += 50.0 * signs * away / away.norm()
    assert cosine(get_algorithm("mean_difference").fit(syn.inputs, 3).direction, d) >= 0.9
    with pytest.raises(MasteerError, match="rotation: at layer 3 the positive residuals are not closer in angle"):
        get_algorithm("rotation").fit(syn.inputs, 3)
    assert get_algorithm("rotation", angle_degrees=10.0).fit(syn.inputs, 3).metadata["angle_degrees"] == 10.0


# ----------------------------------------------------------------------------- sparse
def sparse_plant(hidden: int, support: list[int], seed: int = 7) -> Synthetic:
    plant = torch.zeros(hidden)
    plant[support] = torch.linspace(1.0, 2.0, len(support)) * torch.tensor([1.0, -1.0] * len(support))[:len(support)]
    return Synthetic(hidden=hidden, seed=seed, noise=0.2, planted={("completion_mean", 3): plant / plant.norm()})


def test_sparse_keeps_exactly_the_planted_coordinates():
    support = [3, 11, 17, 25]
    syn = sparse_plant(HIDDEN, support)
    proposal = get_algorithm("sparse", k=4).fit(syn.inputs, 3)
    assert proposal.metadata["support"] == support
    assert torch.nonzero(proposal.direction).flatten().tolist() == support
    m = syn.mean_difference("completion_mean", 3).float()
    assert torch.equal(proposal.direction[support], m[support])  # kept values are the mean difference's
    assert proposal.metadata["kept_norm_fraction"] > 0.9


def test_sparse_default_k_is_five_percent_of_the_hidden_size():
    hidden = 100
    support = [2, 30, 31, 64, 99]
    syn = sparse_plant(hidden, support)
    proposal = get_algorithm("sparse").fit(syn.inputs, 3)
    assert proposal.metadata["k"] == 5
    assert proposal.metadata["support"] == support
    assert get_algorithm("sparse").fit(Synthetic(hidden=32).inputs, 3).metadata["k"] == 2  # ceil(1.6)


def test_sparse_with_every_coordinate_is_the_mean_difference(synthetic):
    full = get_algorithm("sparse", k=HIDDEN).fit(synthetic.inputs, 3).direction
    same = get_algorithm("mean_difference").fit(synthetic.inputs, 3).direction
    assert torch.allclose(full, same, rtol=1e-6, atol=1e-6)
    with pytest.raises(MasteerError, match=f"sparse: k={HIDDEN + 1} is larger than the hidden size {HIDDEN}"):
        get_algorithm("sparse", k=HIDDEN + 1).fit(synthetic.inputs, 3)


def test_sparse_breaks_ties_by_the_lower_index():
    syn = Synthetic(seed=8)
    li = LAYERS.index(3)
    tie = torch.zeros(HIDDEN)
    tie[[4, 9, 20]] = torch.tensor([1.0, -1.0, 1.0])
    syn.acts.resid_completion_mean[syn.inputs.paired, li] = tie
    syn.acts.resid_completion_mean[syn.inputs.paired_negative, li] = 0.0
    assert get_algorithm("sparse", k=2).fit(syn.inputs, 3).metadata["support"] == [4, 9]
