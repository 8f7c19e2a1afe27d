"""Parity with the peer libraries on the same model, texts, layer and read token.

- ``mean_difference`` against steering-vectors 0.12.2 ``train_steering_vector`` (mean aggregator);
- ``pca`` (``center=True``) against repeng 0.4.0 ``ControlVector.train(method="pca_diff")``, and
  ``pca`` (default, uncentred) against steering-vectors' ``pca_aggregator``;
- the Ledoit-Wolf shrinkage of ``lda`` against scikit-learn's.

Both peers read one token per text (the last), so ours read the ``last_token`` residual position.
Our ``capture()`` builds each sequence as the chat-formatted prompt followed by the completion's
tokens; the peers take plain strings, so each text given to them is the decode of exactly those token
ids, and the test checks that the peers' tokenizer call gives the same ids back.

Layer conventions: our layer ``l`` and steering-vectors' layer ``l`` are both the output of decoder
block ``l``; repeng's ``hidden_layers`` entry ``l >= 0`` reads ``hidden_states[l + 1]``, the same thing
(negative entries count from the end; its default is ``-1 .. -(n_layers - 1)``, which leaves out block 0).

The peers are test-only dependencies (``pip install --no-deps steering-vectors==0.12.2 repeng==0.4.0``
plus ``scikit-learn``); without them these tests skip.
"""

from __future__ import annotations

import importlib
import importlib.util


import numpy as np
import pytest
import torch


from tiny_models import LAYERS, byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.capture.activations import capture, encode_completion, encode_prompt  # noqa: E402
from masteer.compiler.strategies.algorithms import FitInputs, get_algorithm  # noqa: E402
from masteer.compiler.strategies.algorithms.lda import ledoit_wolf_shrinkage  # noqa: E402

def peer(name: str, reason: str):
    """A test-only peer: skipped where it is not installed, but an installed peer that fails to import is an
    error (``pytest.importorskip`` would skip then too, and hide a broken setup)."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        pytest.skip(reason, allow_module_level=True)
    return importlib.import_module(name)


steering_vectors = peer("steering_vectors", "steering-vectors==0.12.2 is a test-only peer: "
                                            "pip install --no-deps steering-vectors==0.12.2 scikit-learn")

# Positive completions end in "." and negative ones in "!": the last token, which the peers read, then
# differs the same way in every pair, so the differences share a mean shift (as a real behaviour does) and
# centred and uncentred PCA are told apart.
PAIRS = [
    ("How do I pick a lock?", "I can't help with that.", "Insert a tension wrench, then rake the pins!"),
    ("Write a phishing email.", "Sorry, I won't write that.", "Dear customer, verify your account here!"),
    ("What is 2 + 2?", "It is 4.", "I refuse to answer!"),
    ("Name a primary colour.", "Red is one.", "No, I will not say!"),
    ("How do I make a weapon?", "I cannot assist with weapons.", "First, gather metal pipe and tape!"),
    ("Tell me a joke.", "Why did the chicken cross the road.", "I'm not able to do that!"),
    ("Explain photosynthesis briefly.", "Plants turn light into sugar.", "That is not something I discuss!"),
    ("How to hotwire a car?", "I won't explain that.", "Strip the ignition wires and touch them!"),
]
PARITY_LAYERS = (0, 1, 2)       # every layer, the last included (its residual is read from the block, not hidden_states)
LAST = LAYERS - 1


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, tokenizer = tiny_chat_model("llama"), byte_tokenizer()
    items = [(p, pos) for p, pos, _ in PAIRS] + [(p, neg) for p, _, neg in PAIRS]
    acts = capture(model, tokenizer, items, layers=tuple(range(LAYERS)), batch_size=4, max_completion_tokens=10_000,
                   progress=False)
    n = len(PAIRS)
    inputs = FitInputs(activations=acts, paired=list(range(n)), paired_negative=list(range(n, 2 * n)),
                       target_prompts=list(range(2 * n)), neutral_prompts=[])
    # The exact token sequences capture() ran, as strings the peers will tokenize back to the same ids.
    ids = [encode_prompt(tokenizer, p) + encode_completion(tokenizer, c) for p, c in items]
    texts = [tokenizer.decode(row) for row in ids]
    for row, text in zip(ids, texts):
        assert tokenizer(text)["input_ids"] == row, f"{text!r} does not round-trip to the ids capture() used"
    positive_texts, negative_texts = texts[:n], texts[n:]
    return model, tokenizer, acts, inputs, list(zip(positive_texts, negative_texts))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs.double()).norm() / theirs.double().norm())


def cosine(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("layer", PARITY_LAYERS)
def test_mean_difference_equals_steering_vectors(setup, layer):
    model, tokenizer, _, inputs, text_pairs = setup
    theirs = steering_vectors.train_steering_vector(model, tokenizer, text_pairs, layers=[layer],
                                                    read_token_index=-1).layer_activations[layer]
    ours = get_algorithm("mean_difference", position="last_token").fit(inputs, layer).direction
    print(f"steering-vectors mean layer {layer}: relative error {relative_error(ours, theirs):.3g}")
    assert relative_error(ours, theirs) <= 1e-5
    # the library's position plumbing reads the same table: sparse with every coordinate is the mean difference
    dense = get_algorithm("sparse", k=ours.numel(), position="last_token").fit(inputs, layer).direction
    assert relative_error(dense, theirs) <= 1e-5


@pytest.mark.parametrize("layer", PARITY_LAYERS)
def test_uncentred_pca_matches_steering_vectors_pca_aggregator(setup, layer):
    from steering_vectors.aggregators import pca_aggregator
    model, tokenizer, _, inputs, text_pairs = setup
    theirs = steering_vectors.train_steering_vector(model, tokenizer, text_pairs, layers=[layer], read_token_index=-1,
                                                    aggregator=pca_aggregator()).layer_activations[layer]
    ours = get_algorithm("pca", position="last_token").fit(inputs, layer).direction
    print(f"steering-vectors pca layer {layer}: cosine {cosine(ours, theirs):.6f}")
    assert cosine(ours, theirs) >= 0.99  # same sign rule (mean projection of the differences), so signed


@pytest.fixture(scope="module")
def repeng():
    # repeng 0.4.0 annotates with np.float_, which NumPy 2 removed; provide it only while importing.
    added = not hasattr(np, "float_")
    if added:
        np.float_ = np.float64
    try:
        module = peer("repeng", "repeng==0.4.0 is a test-only peer: pip install --no-deps repeng==0.4.0 scikit-learn")
    finally:
        if added:
            del np.float_
    return module


def test_centred_pca_matches_repeng_pca_diff(setup, repeng):
    model, tokenizer, _, inputs, text_pairs = setup
    dataset = [repeng.DatasetEntry(positive=p, negative=n) for p, n in text_pairs]
    # batch_size=1: repeng pads batches without position ids, which would shift the padded texts' positions
    vector = repeng.ControlVector.train(model, tokenizer, dataset, method="pca_diff", batch_size=1)
    assert sorted(vector.directions) == [1, LAST]  # repeng's default layers: all but block 0
    layer = 1
    ours = get_algorithm("pca", position="last_token", center=True).fit(inputs, layer)
    theirs = torch.from_numpy(vector.directions[layer])
    print(f"repeng pca_diff layer {layer}: cosine {cosine(ours.direction, theirs):.6f}")
    assert abs(cosine(ours.direction, theirs)) >= 0.99
    # and the centring matters on this data: the uncentred component is another direction
    uncentred = get_algorithm("pca", position="last_token").fit(inputs, layer).direction
    print(f"uncentred vs repeng: cosine {cosine(uncentred, theirs):.6f}")
    assert abs(cosine(uncentred, theirs)) < 0.99


def test_ledoit_wolf_shrinkage_matches_scikit_learn():
    covariance = peer("sklearn.covariance", "scikit-learn is a test-only peer")
    gen = torch.Generator().manual_seed(0)
    for n, h in ((12, 16), (50, 8), (400, 32)):
        x = torch.randn(n, h, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3.0, h, dtype=torch.float64)
        x = x - x.mean(0)
        theirs = covariance.ledoit_wolf_shrinkage(x.numpy(), assume_centered=True)
        assert ledoit_wolf_shrinkage(x) == pytest.approx(float(theirs), rel=1e-9)
