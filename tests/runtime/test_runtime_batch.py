"""Batch independence: a row's steered logits do not depend on its neighbours or on left padding."""

from __future__ import annotations

import pytest
import torch

from masteer.runtime import SteeredModel, bake
from tiny_models import left_padded_batch, position_ids, random_adapter, supports_additive_bake, tiny_model
from tiny_models import pad_left as _pad_left

ATOL = 1e-5




@torch.no_grad()
def _row_logits(model, batch, index: int) -> torch.Tensor:
    """The logits of row ``index`` at its non-pad positions."""
    out = model(**batch).logits
    return out[index][batch["attention_mask"][index].bool()]


def _rows(seed: int = 21):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (n,), generator=gen) for n in (5, 9, 3, 7)]


@pytest.mark.parametrize("target", ["adapter", "baked"])
def test_row_logits_do_not_depend_on_other_rows_or_padding(kind, target, tmp_path):
    base = tiny_model(kind)
    adapter = random_adapter(base, additive_layer=1 if supports_additive_bake(kind) else None)
    if target == "adapter":
        model = SteeredModel(tiny_model(kind), adapter)
    else:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(bake(tiny_model(kind), adapter, tmp_path / "b")).eval()
    rows = _rows()
    row = rows[0]  # the shortest-but-one row: it gets left padding in every batch below

    alone = _row_logits(model, _pad_left([row]), 0)
    assert alone.shape == (len(row), 128)
    with torch.no_grad():
        base_alone = base(input_ids=row[None]).logits[0]
    assert (alone - base_alone).abs().max().item() > 1e-2, "steering must act on this row"

    batches = {
        "with neighbours": (_pad_left([row, rows[1], rows[2]]), 0),
        "other neighbours, last row": (_pad_left([rows[3], rows[1], row]), 2),
        "extra padding": (_pad_left([rows[2], row], extra_pad=6), 1),
    }
    for label, (batch, index) in batches.items():
        assert batch["attention_mask"][index, 0] == 0, f"{label}: the row should be left-padded"
        inside = _row_logits(model, batch, index)
        diff = (inside - alone).abs().max().item()
        assert diff <= ATOL, f"{kind}/{target}: row logits change by {diff:.3e} {label}"

    # Neighbours differ between batches, yet a second row's result is unaffected by which rows surround it.
    a = _row_logits(model, _pad_left([rows[1], rows[0]]), 0)
    b = _row_logits(model, _pad_left([rows[1], rows[3], rows[2]]), 0)
    assert (a - b).abs().max().item() <= ATOL


def test_steered_batch_equals_rows_run_one_by_one(kind):
    """The whole left-padded batch at once (positions counted from the first real token) vs each row alone."""
    model = SteeredModel(tiny_model(kind), random_adapter(tiny_model(kind)))
    batch = left_padded_batch(lengths=(6, 3, 5))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    with torch.no_grad():
        full = model(**batch).logits
        for i in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][i].bool()
            single = model(input_ids=batch["input_ids"][i][keep][None]).logits[0]
            diff = (full[i][keep] - single).abs().max().item()
            assert diff <= ATOL, f"{kind}: row {i} differs by {diff:.3e} inside the batch"
