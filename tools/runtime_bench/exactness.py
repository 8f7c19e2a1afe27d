"""Logit checks run before timing: every arm steers, and the lowerings compute what the adapter does."""

from __future__ import annotations

import torch

from .arms import Arm
from .options import ADAPTER, BAKED, BAKED_UNPADDED, BASE, BASE_AGAIN


@torch.no_grad()
def logit_checks(arms: list[Arm], inputs: dict) -> dict[str, float]:
    """Max |logit difference| on a prefill batch: each arm against base (it steers), the adapter against the
    baked checkpoint and the baked (padded) against the unpadded one (both should be float rounding)."""
    logits = {}
    for arm in arms:
        with arm.active():
            try:
                logits[arm.name] = arm.model(**inputs).logits.float()
            except Exception:  # noqa: BLE001 - the failure is recorded by run_rounds
                continue
    checks = {f"{name}_vs_base": float((value - logits[BASE]).abs().max()) for name, value in logits.items()
              if name not in (BASE, BASE_AGAIN)}
    checks["adapter_vs_baked"] = float((logits[ADAPTER] - logits[BAKED]).abs().max())
    if BAKED_UNPADDED in logits:
        checks[f"baked_vs_{BAKED_UNPADDED}"] = float((logits[BAKED] - logits[BAKED_UNPADDED]).abs().max())
    checks["logit_scale"] = float(logits[BASE].abs().max())
    return checks
