"""The steering-algorithm library: one file per algorithm, all behind ``base.Algorithm``."""

from . import mean_difference  # noqa: F401  (registers itself)
from .base import Algorithm, FitInputs, Proposal
from .registry import available, get_algorithm, register

__all__ = ["Algorithm", "FitInputs", "Proposal", "available", "get_algorithm", "register"]
