"""masteer.runtime: load, attach, inspect and bake compiled steering adapters.

Needs torch, safetensors and transformers only; it never imports ``masteer.compiler``, so a
consumer of a compiled adapter installs nothing else.
"""


from .version import __version__  # noqa: F401
from .artifact import ABLATION, ADDITIVE, NEURON, ROTATION, SteeringAdapter, StrategySpec
from .attach import SteeredModel, attach, check_compatible
from .bake import merge_into_model, save_baked
from .checkpoint import bake
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
