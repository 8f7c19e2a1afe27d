"""A bfloat16 copy of the model for the compile's selection stages; the evaluation keeps the model as loaded.

Choosing strengths, anchors and the program means scoring dozens of candidates on the val split:
hundreds of forward passes whose numbers only rank candidates. On a CPU with bfloat16 matrix units
(AVX512-BF16 / AMX) a bfloat16 copy of SmolLM2-135M does the same work about 2-3x faster than float32
(64 val items, 2 cores: completion log-probabilities 1.3 against 4.0 s, next-token log-probabilities on
64 neutral prompts 2.2 against 4.6 s, 12 greedy tokens for 64 prompts 2.2 against 5.3 s), provided the
vocabulary projection gets a contiguous input (``models.contiguous_head_input``; without it bfloat16 was
slower than float32). Asking float32 matrix products for reduced precision instead
(``torch.set_float32_matmul_precision("medium")``) gained 1.5x on a scoring pass and slowed greedy decoding:
oneDNN converts the weights on every call.

What the copy changes is bounded to choices (strengths, the program's start and additions): the capture
the directions and anchors are fitted on, the count of val neutral prompts a program's gates open on
(thresholds compare activations, and bfloat16 moves prompts across them), the static arm's matching and
every number of the evaluation are measured on the model as loaded. The compile report says which
precision selected (``selection_precision``).

Not the default: the choices it feeds are close calls. On refusal / SmolLM2 the bfloat16 selection
specialised one anchor on a slightly different set of training targets, which let a second strategy pass
the neutral-prompt limit; the program (logistic probe + LDA at layer 14 instead of the probe alone) refused
67.4% of the harmful test prompts instead of 69.5% and 13.8% of the benign instead of 12.5%: within the
noise of 190 and 160 prompts, but not the same program (docs/benchmarks/compile.md).

``bf16-search`` keeps the library's calibration on the model as loaded (its best always-on strategies are
within 0.007 nats of each other on refusal, so a bfloat16 ranking picked another static baseline) and runs
the program search alone on the copy: README's tables and adapter unchanged, 5.1 against 5.7 minutes.
"""

from __future__ import annotations

import copy

import torch

from masteer.runtime.errors import MasteerError

from .models import LoadedModel
from .names import (SELECTION_AUTO as AUTO, SELECTION_BF16 as BF16, SELECTION_BF16_SEARCH as BF16_SEARCH,
                    SELECTION_EXACT as EXACT, SELECTION_PRECISIONS)


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 matrix units (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(requested: str, model: torch.nn.Module) -> str:
    """``auto`` -> ``bf16`` for a float32 model on a device with bfloat16 units, else ``exact``."""
    if requested not in SELECTION_PRECISIONS:
        raise MasteerError(f"selection precision must be one of {', '.join(SELECTION_PRECISIONS)}, got {requested!r}")
    parameter = next(model.parameters())
    if requested == AUTO:
        return BF16 if parameter.dtype == torch.float32 and fast_bfloat16(parameter.device) else EXACT
    if requested in (BF16, BF16_SEARCH) and parameter.dtype not in (torch.float32, torch.bfloat16):
        raise MasteerError(f"selection precision {requested} needs a float32 or bfloat16 model, got {parameter.dtype}")
    return requested


def bfloat16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every floating parameter in bfloat16, built without a second float32 copy.

    Parameters are converted first and handed to ``deepcopy`` through its memo, so tied weights stay tied
    and the peak is the bfloat16 copy alone; buffers (rotary frequencies) keep their dtype."""
    memo: dict[int, torch.nn.Parameter] = {}
    for p in model.parameters():
        if id(p) not in memo:
            value = p.detach().to(torch.bfloat16) if p.is_floating_point() else p.detach().clone()
            memo[id(p)] = torch.nn.Parameter(value, requires_grad=False)
    out = copy.deepcopy(model, memo)
    out.eval()
    return out


def selection_model(loaded: LoadedModel, requested: str = EXACT) -> tuple[LoadedModel, str]:
    """(the model the selection stages run on, the precision resolved): ``loaded`` itself for ``exact`` or a
    model already in bfloat16, else a bfloat16 copy sharing the tokenizer. With ``bf16-search`` the caller
    runs the library's calibration on ``loaded`` and only the program search on the copy."""
    precision = resolve_precision(requested, loaded.model)
    if precision == EXACT or next(loaded.model.parameters()).dtype == torch.bfloat16:
        return loaded, precision
    return LoadedModel(bfloat16_copy(loaded.model), loaded.tokenizer, loaded.name), precision
