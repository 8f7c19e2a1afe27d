"""The llama.cpp control vector: the file reads back (gguf package) with the program's vectors under llama.cpp's
1-based ``direction.N`` names, and doing with it what llama.cpp does (add ``direction.N`` to the output of block
N) gives the masteer runtime's logits. What a control vector cannot hold is refused in one line."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from masteer.compiler import cli
from masteer.compiler.lowering.card import GGUF, identify, shipment_card
from masteer.compiler.lowering.control_vector import read_control_vector, write_control_vector
from masteer.runtime import LoweringError, attach
from masteer.runtime.hosts import decoder_layers
from tiny_models import HIDDEN, LAYERS, MODEL_KINDS, left_padded_batch, logits, max_diff, random_adapter, tiny_model

ATOL = 1e-4


def two_vectors(model):
    adapter = random_adapter(model, counts={}, additive_layer=1)
    adapter.add_additive(2, "late", direction=torch.nn.functional.normalize(torch.randn(HIDDEN), dim=0), strength=1.5)
    adapter.add_additive(2, "late2", direction=torch.nn.functional.normalize(torch.randn(HIDDEN), dim=0), strength=-0.5)
    return adapter


@torch.no_grad()
def llama_cpp_logits(model, vectors: dict[int, torch.Tensor], batch) -> torch.Tensor:
    """What llama.cpp computes with the file: ``direction.N`` added to decoder block N's output hidden state."""
    def add(vector):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (output[0] + vector,) + output[1:]
            return output + vector
        return hook
    handles = [decoder_layers(model)[n].register_forward_hook(add(v)) for n, v in vectors.items()]
    try:
        return logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_control_vector_reads_back_and_computes_what_the_runtime_does(kind, tmp_path):
    torch.set_num_threads(1)
    model, batch = tiny_model(kind), left_padded_batch()
    adapter = two_vectors(model)
    path = write_control_vector(adapter, tmp_path / "steer.controlvector.gguf", scale=0.5)
    vectors = read_control_vector(path)
    assert sorted(vectors) == list(range(1, LAYERS)), "every steerable block 1..L-1, 1-based"
    late = (adapter.tensors["layers.2.additive.direction"] * torch.tensor([[1.5], [-0.5]])).sum(0) * 0.5
    assert max_diff(vectors[2], late) <= 1e-7
    strength = adapter.strategy("always_on").strength
    assert max_diff(vectors[1], adapter.tensors["layers.1.additive.direction"][0] * strength * 0.5) <= 1e-7
    steered = attach(model, adapter)
    steered.set_scale(0.5)
    try:
        expected = logits(model, batch)
    finally:
        steered.detach()
    assert max_diff(expected, logits(model, batch)) > 1e-2
    assert max_diff(llama_cpp_logits(model, vectors, batch), expected) <= ATOL
    import gguf
    reader = gguf.GGUFReader(str(path))
    hint = reader.fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2"}[kind]
    assert int(reader.fields["controlvector.layer_count"].parts[-1][0]) == LAYERS - 1
    assert [p.name for p in tmp_path.iterdir()] == ["steer.controlvector.gguf"], "no temporary file left"
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "the mode an ordinary open() gives, not a private 0600"


def test_what_a_control_vector_cannot_hold_is_refused_in_one_line(tmp_path):
    model = tiny_model("llama")
    for adapter, words in ((random_adapter(model), "bake"), (random_adapter(model, counts={}), "nothing to lower"),
                           (random_adapter(model, counts={}, additive_layer=0), "block 0")):
        with pytest.raises(LoweringError) as err:
            write_control_vector(adapter, tmp_path / "x.gguf")
        assert words in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_export_gguf_through_the_cli_and_its_card(tmp_path):
    model = tiny_model("qwen2")
    adapter = two_vectors(model)
    adapter.save(tmp_path / "adapter")
    out = tmp_path / "ship" / "steer.controlvector.gguf"
    result = CliRunner().invoke(cli.main, ["export", "gguf", str(tmp_path / "adapter"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--control-vector" in result.output and set(read_control_vector(out)) == {1, 2}
    assert identify(out.parent).kind == GGUF
    assert "--control-vector steer.controlvector.gguf" in shipment_card(out.parent, "me/cv")
    gated = tmp_path / "gated"
    random_adapter(model).save(gated)
    result = CliRunner().invoke(cli.main, ["export", "gguf", str(gated), "--out", str(tmp_path / "g.gguf")])
    assert result.exit_code == 1 and "masteer bake" in result.output
