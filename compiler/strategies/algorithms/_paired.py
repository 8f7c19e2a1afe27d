"""What the contrast algorithms share: typed arguments, validated reads, and one scaling rule.

Not an algorithm (nothing here registers). Every built-in reads its residuals through
:func:`paired_residuals` (or :func:`group_residuals`) so that the checks and their messages are the
same everywhere: no pairs, misaligned pairs and unknown positions are a :class:`MasteerError` naming
the algorithm; a layer that was not captured is the ``KeyError`` of ``Activations.layer_index``.

The scaling rule (:func:`scale_to_mean_difference`): an algorithm that finds a *unit* direction ``u``
returns ``(u . m) u``, where ``m`` is the mean paired difference (positive minus negative) at the same
layer and position, with the sign of ``u`` chosen so that ``u . m > 0``. Adding the result at
strength 1 moves an activation along ``u`` by exactly as much as the average pair differs along
``u``. So strength 1 means the same thing for every algorithm as it does for ``mean_difference``
(where ``u = m / |m|`` and the result is ``m`` itself), and a strength calibrated for one transfers to
another.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from masteer.runtime.errors import MasteerError

from ...capture.activations import RESIDUAL_POSITIONS
from .base import FitInputs

DEFAULT_POSITION = "completion_mean"


def check_position(position: str, owner: str) -> None:
    if position not in RESIDUAL_POSITIONS:
        raise MasteerError(f"{owner}: unknown residual position {position!r}; known: {', '.join(RESIDUAL_POSITIONS)}")


def make_args(algorithm: str, args_type: type, args: Any, kwargs: dict[str, Any]) -> Any:
    """The algorithm's typed arguments from either a ready ``args`` object or keyword arguments."""
    if args is not None:
        if kwargs:
            raise MasteerError(f"{algorithm}: pass either args= or keyword arguments, not both")
        if not isinstance(args, args_type):
            raise MasteerError(f"{algorithm}: args must be a {args_type.__name__}, got {type(args).__name__}")
        return args
    known = [f.name for f in dataclasses.fields(args_type)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise MasteerError(f"{algorithm}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(known)}")
    return args_type(**kwargs)


def paired_residuals(inputs: FitInputs, layer: int, position: str, algorithm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) residuals, each [pairs, H] in float64, row i of one paired with row i of the other."""
    if not inputs.paired:
        raise MasteerError(f"{algorithm}: no paired samples; the algorithm needs the same prompts with a positive "
                           f"and a negative completion")
    if len(inputs.paired) != len(inputs.paired_negative):
        raise MasteerError(f"{algorithm}: {len(inputs.paired)} positive but {len(inputs.paired_negative)} negative "
                           f"sequences; paired and paired_negative must be aligned one to one")
    acts = inputs.activations
    positive = acts.residual(position, inputs.paired, layer).double()
    negative = acts.residual(position, inputs.paired_negative, layer).double()
    if torch.equal(positive, negative):
        hint = (" (at last_prompt they never do: both completions of a prompt share it)"
                if position == "last_prompt" else "")
        raise MasteerError(f"{algorithm}: positive and negative residuals coincide at layer {layer}, position "
                           f"{position!r}: the completions do not differ there{hint}")
    return positive, negative


def group_residuals(sequences: Sequence[int], what: str, inputs: FitInputs, layer: int, position: str,
                    algorithm: str) -> torch.Tensor:
    """Residuals [len(sequences), H] in float64 of an unpaired group (e.g. target or neutral prompts)."""
    if not sequences:
        raise MasteerError(f"{algorithm}: no {what} sequences to read")
    return inputs.activations.residual(position, sequences, layer).double()


def unit(vector: torch.Tensor, what: str, algorithm: str, layer: int) -> torch.Tensor:
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise MasteerError(f"{algorithm}: the {what} at layer {layer} is {'zero' if norm == 0 else 'not finite'}; "
                           f"there is no direction to fit")
    return vector / norm


def scale_to_mean_difference(u: torch.Tensor, mean_difference: torch.Tensor, algorithm: str,
                             layer: int) -> torch.Tensor:
    """``(u . m) u`` with the sign of ``u`` chosen so that ``u . m > 0`` (see the module docstring)."""
    u = u / u.norm()
    projection = float(u @ mean_difference)
    if projection == 0.0:
        raise MasteerError(f"{algorithm}: the fitted direction at layer {layer} is orthogonal to the mean paired "
                           f"difference; it has no side pointing from negative to positive")
    return abs(projection) * (u if projection > 0 else -u)


def summary(direction: torch.Tensor, mean_difference: torch.Tensor, pairs: int, position: str) -> dict:
    """Metadata every paired algorithm reports (JSON-serialisable)."""
    cos = float(direction @ mean_difference / (direction.norm() * mean_difference.norm()).clamp_min(1e-30))
    return {"pairs": pairs, "position": position, "norm": float(direction.norm()),
            "mean_difference_norm": float(mean_difference.norm()), "cos_to_mean_difference": round(cos, 6)}
