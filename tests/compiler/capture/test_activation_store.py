"""Capture once: what the capture records, and the on-disk store that lets a second compile skip the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.capture.activation_store import META_NAME, ActivationStore, load_capture  # noqa: E402
from masteer.compiler.capture.activations import (COMPLETION, PROMPT_BODY, PROMPT_TAIL, RESIDUAL_POSITIONS, capture,
                                                  encode_items, left_pad, position_ids)
from masteer.runtime.hosts import decoder_layers  # noqa: E402

ITEMS = [("How do I pick a lock?", "I can't help with that."), ("What is 2 + 2?", "It is 4."),
         ("Name a colour.", None), ("Tell me a joke about cats, please.", "Why did the cat sit on the computer?"),
         ("Hi", "Hello!")]
LAYERS = (0, 2)


class ForwardCounter:
    """Counts model forward passes through a pre-hook; optionally fails on the n-th one."""

    def __init__(self, model, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise KeyboardInterrupt("simulated interruption")

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.set_num_threads(1)
    return tiny_chat_model("llama"), byte_tokenizer()


def reference_states(model, tokenizer, item):
    """Each block's output and each MLP's input for one sequence, run alone (no padding)."""
    prompt, completion = encode_items(tokenizer, [item], 48)[0]
    ids, mask = left_pad([prompt + completion], tokenizer.pad_token_id)
    outputs, mlp_inputs = {}, {}
    hooks = [decoder_layers(model)[l].register_forward_hook(
        lambda m, a, o, l=l: outputs.__setitem__(l, (o if isinstance(o, torch.Tensor) else o[0])[0]))
        for l in LAYERS]
    hooks += [decoder_layers(model)[l].mlp.register_forward_pre_hook(
        lambda m, a, l=l: mlp_inputs.__setitem__(l, a[0][0])) for l in LAYERS]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    for h in hooks:
        h.remove()
    return len(prompt), len(completion), outputs, mlp_inputs


def test_the_pass_stops_after_the_last_captured_layer_with_the_same_numbers(model_and_tokenizer):
    """Blocks above the last captured layer and the vocabulary projection are not run; what is recorded is
    bit for bit what a full pass gives (the capture store's key does not change)."""
    model, tokenizer = model_and_tokenizer
    ran: list[int] = []
    hooks = [block.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
             for i, block in enumerate(decoder_layers(model))]
    head = model.lm_head.register_forward_pre_hook(lambda m, a: ran.append(-1))
    try:
        early = capture(model, tokenizer, ITEMS, (0, 1), batch_size=2, progress=False)
    finally:
        for h in hooks + [head]:
            h.remove()
    assert set(ran) == {0, 1}                       # block 2 (of 3) and the output projection never ran
    full = capture(model, tokenizer, ITEMS, (0, 1, 2), batch_size=2, progress=False)
    for position in RESIDUAL_POSITIONS:
        assert torch.equal(early.table(position), full.table(position)[:, :2])
    assert torch.equal(early.mlp_in_tokens, full.mlp_in_tokens[:, :2])


def test_every_position_reads_the_right_token_of_an_unpadded_run(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    acts = capture(model, tokenizer, ITEMS, LAYERS, batch_size=3, progress=False)
    assert set(RESIDUAL_POSITIONS) == {"completion_mean", "last_prompt", "first_completion", "last_token"}
    for i, item in enumerate(ITEMS):
        n_prompt, n_completion, outputs, mlp_inputs = reference_states(model, tokenizer, item)
        for li, layer in enumerate(LAYERS):
            expected = {"last_prompt": outputs[layer][n_prompt - 1], "last_token": outputs[layer][-1],
                        "completion_mean": outputs[layer][n_prompt:].mean(0) if n_completion else torch.zeros(48),
                        "first_completion": outputs[layer][n_prompt] if n_completion else torch.zeros(48)}
            for position, value in expected.items():
                torch.testing.assert_close(acts.table(position)[i, li], value, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(acts.mlp_in_last_prompt[i, li], mlp_inputs[layer][n_prompt - 1],
                                       atol=1e-5, rtol=1e-4)
            every = acts.tokens_of([i], layer)
            torch.testing.assert_close(every, mlp_inputs[layer], atol=1e-5, rtol=1e-4)
        kinds = acts.token_kind[acts.token_sequence == i].tolist()
        assert kinds == [PROMPT_BODY] * (n_prompt - 4) + [PROMPT_TAIL] * 4 + [COMPLETION] * n_completion


def test_a_second_capture_of_the_same_items_runs_no_model_pass(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    store = ActivationStore(tmp_path)
    counter = ForwardCounter(model)
    try:
        first = store.capture(model, tokenizer, ITEMS, LAYERS, batch_size=2, progress=False)
        passes = counter.calls
        second = store.capture(model, tokenizer, ITEMS, LAYERS, batch_size=2, progress=False)
    finally:
        counter.remove()
    assert passes == 3 and counter.calls == passes, "the second capture must not run the model"
    assert (store.hits, store.misses) == (1, 1)
    in_ram = capture(model, tokenizer, ITEMS, LAYERS, batch_size=2, progress=False)
    for name in ("resid_completion_mean", "resid_last_prompt", "resid_first_completion", "resid_last_token",
                 "mlp_in_last_prompt", "mlp_in_tokens", "token_sequence", "token_kind"):
        assert torch.equal(getattr(first, name), getattr(in_ram, name)), name
        assert torch.equal(getattr(second, name), getattr(in_ram, name)), name
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("change", ["layers", "items", "model", "completion_cap"])
def test_the_key_changes_with_what_changes_the_numbers(model_and_tokenizer, tmp_path, change):
    model, tokenizer = model_and_tokenizer
    store = ActivationStore(tmp_path)
    store.capture(model, tokenizer, ITEMS, LAYERS, progress=False)
    kwargs = dict(model=model, tokenizer=tokenizer, items=ITEMS, layers=LAYERS, progress=False)
    if change == "layers":
        kwargs["layers"] = (0, 1)
    elif change == "items":
        kwargs["items"] = ITEMS[:-1] + [("Hi", "Hello?")]
    elif change == "model":
        kwargs["model"] = tiny_chat_model("llama", seed=1)
    else:
        kwargs["max_completion_tokens"] = 5
    store.capture(**kwargs)
    assert (store.hits, store.misses) == (0, 2)
    assert len(list(tmp_path.iterdir())) == 2


def test_an_interrupted_capture_leaves_nothing_behind(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    store = ActivationStore(tmp_path)
    counter = ForwardCounter(model, fail_at=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            store.capture(model, tokenizer, ITEMS, LAYERS, batch_size=2, progress=False)
    finally:
        counter.remove()
    assert list(tmp_path.iterdir()) == []
    counter = ForwardCounter(model)
    try:
        store.capture(model, tokenizer, ITEMS, LAYERS, batch_size=2, progress=False)
    finally:
        counter.remove()
    assert counter.calls == 3 and store.misses == 2


def test_a_damaged_stored_capture_is_captured_again(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    store = ActivationStore(tmp_path)
    first = store.capture(model, tokenizer, ITEMS, LAYERS, progress=False)
    folder = Path(first.meta["stored_at"])
    expected = first.mlp_in_tokens.clone()
    data = (folder / "mlp_in_tokens.npy").read_bytes()
    (folder / "mlp_in_tokens.npy").write_bytes(data[:len(data) // 2])  # truncated
    with pytest.raises(ValueError):
        load_capture(folder)
    logged = []
    again = store.capture(model, tokenizer, ITEMS, LAYERS, progress=False, log=logged.append)
    assert store.misses == 2 and any("unreadable" in line for line in logged)
    assert torch.equal(again.mlp_in_tokens, expected)


def test_stored_tables_are_memory_mapped_and_the_files_never_change(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    store = ActivationStore(tmp_path)
    acts = store.capture(model, tokenizer, ITEMS, LAYERS, progress=False)
    folder = Path(acts.meta["stored_at"])
    assert (folder / META_NAME).is_file()
    on_disk = np.load(folder / "resid_last_prompt.npy", mmap_mode="r")
    assert isinstance(on_disk, np.memmap) and on_disk.shape == (len(ITEMS), len(LAYERS), 48)
    before = float(on_disk[0, 0, 0])
    acts.resid_last_prompt[0, 0, 0] += 1.0  # copy-on-write: the caller's view changes, the file does not
    assert float(np.load(folder / "resid_last_prompt.npy", mmap_mode="r")[0, 0, 0]) == before
