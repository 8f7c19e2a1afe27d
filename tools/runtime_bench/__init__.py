"""The runtime benchmark's core (``tools/bench_runtime.py`` is its command line): what a compiled adapter costs
at inference against the base model, its baked checkpoint and the peer libraries.

One module per concern, in data-flow order: ``options`` (shapes, names, the run's settings), ``models`` (random
weights of a real model's shape and a compiled adapter's program), ``baking`` (the baked checkpoints, padded and not),
``arms`` (how each arm switches on), ``exactness`` (logit checks), ``timing`` (workloads, interleaved rounds),
``stats`` (medians, spreads, paired ratios, the table), ``run`` (all of it, as a JSON-ready dict).
"""

from .options import QUICK, SHAPES, BenchOptions
from .run import run_benchmark
from .stats import markdown_table

__all__ = ["QUICK", "SHAPES", "BenchOptions", "run_benchmark", "markdown_table"]
