"""masteer.runtime: load, attach, inspect and bake compiled steering adapters.

Needs torch, safetensors and transformers only; it never imports ``masteer.compiler``, so a
consumer of a compiled adapter installs nothing else.
"""

__version__ = "0.1.0"

from .artifact import ABLATION, ADDITIVE, NEURON, ROTATION, SteeringAdapter, StrategySpec
from .attach import SteeredModel, attach, check_compatible
from .bake import bake, merge_into_model, save_baked
from .errors import (AdapterFormatError, FingerprintMismatch, HostNotSupported, LoweringError,
                     MasteerError)
from .fingerprint import Fingerprint, model_fingerprint
from .hosts import GATED, PLAIN, host_layout

__all__ = [
    "ABLATION", "ADDITIVE", "NEURON", "ROTATION", "GATED", "PLAIN", "SteeringAdapter", "StrategySpec",
    "SteeredModel", "attach",
    "check_compatible", "bake", "merge_into_model", "save_baked", "AdapterFormatError", "FingerprintMismatch",
    "HostNotSupported", "LoweringError", "MasteerError", "Fingerprint", "model_fingerprint", "host_layout",
]
