"""What a runtime benchmark run depends on: model shapes, dtypes, arm and workload names, the options."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Config dicts of real models (from their config.json); weights are random, only the shapes matter.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False),
    # the mechanics tests' tiny Llama: for the benchmark's own test, not for numbers
    "tiny": dict(model_type="llama", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=False),
}
EMBEDDED = "embedded"  # the real embedded SmolLM2-135M-Instruct weights, via the compiler's loader
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE, BASE_AGAIN, ADAPTER, BAKED, BAKED_UNPADDED = "base", "base-again", "adapter", "baked", "baked-unpadded"
STEERING_VECTORS, REPENG = "steering-vectors", "repeng"
WORKLOADS = ("prefill_b1", "prefill_batch", "decode_b1")
CLOCKS = ("wall", "cpu")  # wall clock, and this process's CPU time (the work, not the wait, on a shared CPU)
KERNELS = "kernels"       # the profiler's summed kernel (GPU) or operator (CPU) times: the work, not the host


def clocks(options: "BenchOptions") -> tuple[str, ...]:
    return CLOCKS + ((KERNELS,) if options.kernel_clock else ())


@dataclass
class BenchOptions:
    """Everything one benchmark run depends on; ``quick`` shrinks it to a smoke run."""
    shape: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    rounds: int = 12
    inner: int = 1                 # calls per measurement (the mean is recorded); raise it on a GPU
    prompt_tokens: int = 32
    new_tokens: int = 32
    batch: int = 16
    layers: int = 3                # program layers (middle of the stack)
    neurons: int = 2               # gated neurons per program layer
    strength: float = 4.0
    pad_to: int = 64               # the baked arm's MLP alignment (the bake's default); >1 adds a baked-unpadded arm
    baked_in_memory: bool = False  # skip the disk round trip of the baked checkpoint (same weights)
    peers: bool = True
    seed: int = 0
    depth: int = 0                 # decoder layers; 0: the shape's own (fewer fit more copies on one device)
    max_seconds: int = 0           # start no round after this long (a lent GPU's lease); 0: all rounds
    kernel_clock: bool = False     # also a profiled call per measurement: summed kernel times (timing.kernel_seconds)

    def __post_init__(self):
        if self.shape not in SHAPES and self.shape != EMBEDDED:
            raise ValueError(f"unknown --shape {self.shape!r}; known: {', '.join([*SHAPES, EMBEDDED])}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        for name in ("threads", "rounds", "inner", "prompt_tokens", "new_tokens", "batch", "layers", "neurons"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_seconds < 0:
            raise ValueError(f"--max-seconds must be 0 (no limit) or positive, got {self.max_seconds}")
        if self.depth < 0 or (self.depth and self.shape == EMBEDDED):
            raise ValueError(f"--depth must be 0 (the shape's own) or a layer count of a random --shape, "
                             f"got {self.depth} with --shape {self.shape}")
        if self.pad_to < 0:
            raise ValueError(f"--pad-to must be 0 (the exact width) or a positive multiple, got {self.pad_to}")


QUICK = dict(rounds=2, prompt_tokens=16, new_tokens=8)
