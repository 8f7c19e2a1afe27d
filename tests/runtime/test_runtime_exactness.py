"""The core test of the design: a baked checkpoint computes exactly what the attached adapter does.

Each test first checks that the adapter changes the logits clearly (so an equality cannot pass
because steering did nothing), then that the baked model agrees with the adapter to float32 rounding:
on a left-padded batch, step by step through KV-cache generation, and when the baked folder is
loaded by plain transformers in a process that never imports masteer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

from masteer.runtime import SteeredModel, bake, merge_into_model, save_baked
from masteer.runtime.hosts import host_layout
from tiny_models import (PAD_ID, left_padded_batch, logits, random_adapter, supports_additive_bake,
                         tiny_model)

ATOL = 1e-4
MIN_EFFECT = 1e-2  # the adapter must move the logits at least this much for an equality to mean anything


def _adapter_for(kind: str, model):
    """Neurons on two layers (3 and 1 of them) plus an always-on vector where the host can bake one."""
    return random_adapter(model, additive_layer=1 if supports_additive_bake(kind) else None)


def _steered_and_baked(kind: str, tmp_path):
    """(base model, steered model, baked model loaded back from disk, the baked folder)."""
    base = tiny_model(kind)
    adapter = _adapter_for(kind, base)
    steered = SteeredModel(tiny_model(kind), adapter)
    folder = bake(tiny_model(kind), adapter, tmp_path / "baked")
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return base, steered, baked, folder


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _nonpad(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t[mask.bool()]


def test_baked_logits_equal_adapter_logits_on_left_padded_batch(kind, tmp_path):
    base, steered, baked, folder = _steered_and_baked(kind, tmp_path)
    inputs = left_padded_batch()
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the batch must really be left-padded"
    mask = inputs["attention_mask"]

    base_logits, steered_logits, baked_logits = logits(base, inputs), logits(steered, inputs), logits(baked, inputs)
    assert torch.isfinite(_nonpad(steered_logits, mask)).all()
    effect = _max_diff(_nonpad(steered_logits, mask), _nonpad(base_logits, mask))
    assert effect > MIN_EFFECT, f"the random adapter barely steers ({effect:.2e}); the equality would be vacuous"
    diff = _max_diff(_nonpad(baked_logits, mask), _nonpad(steered_logits, mask))
    assert diff <= ATOL, f"{kind}: baked checkpoint differs from the adapter by {diff:.3e}"

    # The baked folder is an ordinary checkpoint with the program recorded next to it.
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "no pickle in a baked folder"
    program = json.loads((folder / "masteer_program.json").read_text())
    expected_layers = {"0", "1", "2"} if supports_additive_bake(kind) else {"0", "2"}
    assert set(program["layers"]) == expected_layers


def test_merge_into_model_in_memory_equals_adapter(kind):
    """merge_into_model + the in-memory forward, and save_baked of that same model, agree with the adapter."""
    model = tiny_model(kind)
    adapter = _adapter_for(kind, model)
    steered = SteeredModel(tiny_model(kind), adapter)
    merged = merge_into_model(model, adapter)
    inputs = left_padded_batch(seed=11)
    mask = inputs["attention_mask"]
    diff = _max_diff(_nonpad(logits(merged, inputs), mask), _nonpad(logits(steered, inputs), mask))
    assert diff <= ATOL, f"{kind}: merged-in-memory differs from the adapter by {diff:.3e}"


def test_save_baked_roundtrips_merged_model(kind, tmp_path):
    model = tiny_model(kind)
    adapter = _adapter_for(kind, model)
    merged = merge_into_model(model, adapter)
    folder = save_baked(merged, tmp_path / "ckpt", adapter=adapter)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = left_padded_batch(seed=12)
    assert torch.equal(logits(reloaded, inputs), logits(merged, inputs))
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\n") and "baked" in readme
    width = reloaded.config.intermediate_size if kind != "gpt2" else reloaded.config.n_inner
    assert width % 64 == 0 and f"Its MLPs are {width} wide" in readme   # the padded width, said on the card
    assert json.loads((folder / "masteer_program.json").read_text())["baked_mlp_width"] == width


def test_bake_with_scale_equals_adapter_with_same_scale(kind, tmp_path):
    base = tiny_model(kind)
    adapter = _adapter_for(kind, base)
    steered = SteeredModel(tiny_model(kind), adapter)
    steered.set_scale(0.5)
    folder = bake(tiny_model(kind), adapter, tmp_path / "half", scale=0.5)
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = left_padded_batch(seed=13)
    mask = inputs["attention_mask"]
    half = logits(steered, inputs)
    steered.set_scale(1.0)
    full = logits(steered, inputs)
    assert _max_diff(_nonpad(half, mask), _nonpad(full, mask)) > MIN_EFFECT, "scale 0.5 should differ from 1"
    assert _max_diff(_nonpad(logits(baked, inputs), mask), _nonpad(half, mask)) <= ATOL


def _greedy(model, inputs, max_new_tokens=6, use_cache=True):
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=PAD_ID, use_cache=use_cache,
                              output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        return model.generate(**inputs, generation_config=config)


def test_kv_cache_generation_matches_step_by_step(kind, tmp_path):
    base, steered, baked, _ = _steered_and_baked(kind, tmp_path)
    inputs = left_padded_batch(seed=5)
    prompt_len = inputs["input_ids"].shape[1]

    out_steered, out_baked, out_base = _greedy(steered, inputs), _greedy(baked, inputs), _greedy(base, inputs)
    assert out_steered.sequences.shape == (3, prompt_len + 6)
    assert len(out_steered.scores) == len(out_baked.scores) == 6
    assert torch.equal(out_steered.sequences, out_baked.sequences), (
        f"{kind}: greedy tokens differ\nadapter: {out_steered.sequences[:, prompt_len:]}\n"
        f"baked:   {out_baked.sequences[:, prompt_len:]}")
    for step, (a, b) in enumerate(zip(out_steered.scores, out_baked.scores)):
        diff = _max_diff(a.float(), b.float())
        assert diff <= ATOL, f"{kind}: step {step} scores differ by {diff:.3e}"
    effect = max(_max_diff(a, b) for a, b in zip(out_steered.scores, out_base.scores))
    assert effect > MIN_EFFECT, "steering should change the generation scores"

    # The cached steps compute the same as recomputing the whole prefix each step (no KV cache).
    out_nocache = _greedy(steered, inputs, use_cache=False)
    assert torch.equal(out_nocache.sequences, out_steered.sequences)
    for step, (a, b) in enumerate(zip(out_nocache.scores, out_steered.scores)):
        assert _max_diff(a, b) <= ATOL, f"{kind}: step {step}: KV-cache vs no-cache differ"


SUBPROCESS_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoMasteer(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "masteer" or name.startswith("masteer."):
                raise ImportError("a baked checkpoint must load without masteer, but " + name + " was imported")
            return None

    sys.meta_path.insert(0, NoMasteer())
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    jobs = json.loads(sys.argv[1])  # [[baked folder, inputs file, output file], ...]
    for folder, inputs_file, out_file in jobs:
        inputs = load_file(inputs_file)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            out = model(**inputs).logits.float().contiguous()
        save_file({"logits": out}, out_file)
        print("OK", type(model).__name__)
    loaded = sorted(n for n in sys.modules if n == "masteer" or n.startswith("masteer."))
    assert "masteer" not in sys.modules and not loaded, loaded
    print("NO-MASTEER")
""")


@pytest.fixture(scope="module")
def plain_process_logits(tmp_path_factory):
    """Bake one adapter per host family, then load all three folders in ONE fresh Python process that
    refuses to import masteer (one interpreter start instead of three keeps the suite fast).

    Returns {kind: (logits from the plain process, adapter logits, base logits, attention mask)}.
    """
    from tiny_models import MODEL_KINDS
    root = tmp_path_factory.mktemp("plain_process")
    jobs, expected = [], {}
    for kind in MODEL_KINDS:
        base = tiny_model(kind)
        adapter = _adapter_for(kind, base)
        folder = bake(tiny_model(kind), adapter, root / f"baked-{kind}")
        inputs = left_padded_batch(seed=7)
        inputs_file, out_file = root / f"inputs-{kind}.safetensors", root / f"logits-{kind}.safetensors"
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_file))
        jobs.append([str(folder), str(inputs_file), str(out_file)])
        steered = SteeredModel(tiny_model(kind), adapter)
        expected[kind] = (out_file, logits(steered, inputs), logits(base, inputs), inputs["attention_mask"])
    script = root / "load_baked.py"
    script.write_text(SUBPROCESS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(script), json.dumps(jobs)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"plain-transformers process failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.count("OK ") == len(MODEL_KINDS) and "NO-MASTEER" in proc.stdout, proc.stdout
    return {kind: (load_file(str(out))["logits"], *rest) for kind, (out, *rest) in expected.items()}


def test_baked_folder_loads_without_masteer_in_a_fresh_process(kind, plain_process_logits):
    other, expected, base, mask = plain_process_logits[kind]
    assert _max_diff(_nonpad(expected, mask), _nonpad(base, mask)) > MIN_EFFECT
    diff = _max_diff(_nonpad(other, mask), _nonpad(expected, mask))
    assert diff <= ATOL, f"{kind}: baked checkpoint in a plain process differs by {diff:.3e}"


def test_host_layout_families():
    assert host_layout(tiny_model("llama")).form == "gated"
    assert host_layout(tiny_model("qwen2")).form == "gated"
    assert host_layout(tiny_model("gpt2")).form == "plain"
