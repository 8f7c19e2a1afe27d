"""The steering-algorithm library: one file per algorithm, all behind ``base.Algorithm``."""

# Each built-in registers itself on import.
from . import directional_ablation, lda, logistic_probe, mean_difference, pca, rotation, sparse
from .base import Algorithm, FitInputs, Proposal
from .registry import available, get_algorithm, register

__all__ = ["Algorithm", "FitInputs", "Proposal", "available", "get_algorithm", "register"]
