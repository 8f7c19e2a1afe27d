"""The runtime benchmark's core (tools/runtime_bench) on the tiny random Llama: it measures every arm, records a
peer's failure instead of crashing, and its masteer arms compute equal logits. No timing is asserted (speed goals
live in the benchmark's own output, docs/benchmarks/runtime.md); only that the times are there and finite.

tools/ is not a package on the path: the core is loaded from its folder by file location.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from tool_scripts import load_tool

TOOLS = Path(__file__).resolve().parents[2] / "tools"
MASTEER_ARMS = ("base", "base-again", "adapter", "baked", "baked-unpadded")
PEER_ARMS = ("steering-vectors", "repeng")


def load_core():
    folder = TOOLS / "runtime_bench"
    spec = importlib.util.spec_from_file_location("runtime_bench", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtime_bench"] = module
    spec.loader.exec_module(module)
    return module


core = load_core()
stats = importlib.import_module("runtime_bench.stats")


@pytest.fixture(scope="module")
def result():
    threads = torch.get_num_threads()
    try:
        options = core.BenchOptions(shape="tiny", rounds=2, prompt_tokens=8, new_tokens=4, batch=4, pad_to=64)
        yield core.run_benchmark(options, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_every_arm_has_a_row_per_workload_with_finite_times(result, clock):
    for workload in ("prefill_b1", "prefill_batch", "decode_b1"):
        rows = {row["arm"]: row for row in result["rows"] if row["workload"] == workload and row["clock"] == clock}
        assert sorted(rows) == sorted(MASTEER_ARMS + PEER_ARMS), workload
        for arm, row in rows.items():
            if "error" in row:  # only a peer may fail, and its failure is kept as text
                assert arm in PEER_ARMS and row["error"], (workload, arm)
                continue
            assert row["rounds"] == 2
            assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("median_ms", "min_ms", "max_ms")), row
            assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
            assert len(result["raw_seconds"][clock][workload][arm]) == 2
    failed = [(row["workload"], row["arm"]) for row in result["rows"] if "error" in row]
    assert all(arm not in MASTEER_ARMS for _, arm in failed), failed


def test_adapter_baked_and_unpadded_logits_are_equal_and_steered(result):
    checks, built = result["logit_checks"], result["built"]
    assert checks["adapter_vs_base"] > 0.01 * checks["logit_scale"]  # the adapter really changes the logits
    assert checks["adapter_vs_baked"] <= 1e-5
    assert checks["baked_vs_baked-unpadded"] <= 1e-5
    assert checks["steering-vectors_vs_base"] > 0.01 * checks["logit_scale"]
    assert (built["base_mlp_width"], built["baked_mlp_width"], built["unpadded_mlp_width"]) == (96, 128, 98)


def test_median_interval_uses_binomial_order_statistics():
    assert stats.median_interval(list(range(1, 13))) == (3, 10)  # n=12: x_(3)..x_(10) covers 96.1%
    assert stats.median_interval([5.0, 1.0, 3.0, 2.0, 4.0]) is None  # 5 values: the range covers 93.8% < 95%
    assert stats.quantile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75  # numpy's linear interpolation


def test_ratios_are_paired_per_round():
    base = [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]  # drift between rounds, the arm always 10% slower than base
    times = {w: {"base": base, "base-again": list(base), "adapter": [1.1 * t for t in base]}
             for w in ("prefill_b1", "prefill_batch", "decode_b1")}
    rows = stats.summarise(times, {w: {} for w in times}, "cpu")
    adapter = next(r for r in rows if r["arm"] == "adapter" and r["workload"] == "decode_b1")
    assert adapter["ratio_median"] == pytest.approx(1.1) and adapter["ratio_ci95"] == pytest.approx([1.1, 1.1])
    assert stats.resolution(rows) == {"cpu": {w: pytest.approx(0.0) for w in times}}


def _kernel_clock_run() -> dict:
    """A two-round run of the tiny Llama with the kernel clock on (no peers)."""
    threads = torch.get_num_threads()
    try:
        options = core.BenchOptions(shape="tiny", rounds=2, prompt_tokens=8, new_tokens=2, batch=2, peers=False,
                                    kernel_clock=True)
        return core.run_benchmark(options, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)


def test_the_kernel_clock_adds_a_row_per_arm_and_workload_from_the_profiler():
    result = _kernel_clock_run()
    rows = [row for row in result["rows"] if row["clock"] == "kernels"]
    assert {(row["workload"], row["arm"]) for row in rows} == {
        (w, a) for w in ("prefill_b1", "prefill_batch", "decode_b1") for a in MASTEER_ARMS}
    for row in rows:   # the operators' summed time: positive, and of the order of the call's wall time (a
                       # separate, profiled run, so not bounded by it exactly)
        wall = next(r for r in result["rows"] if r["clock"] == "wall" and r["workload"] == row["workload"]
                    and r["arm"] == row["arm"])
        assert 0 < row["min_ms"] and row["median_ms"] < 3 * wall["median_ms"], (row, wall)


def test_a_failing_profiler_drops_the_kernel_clock_and_keeps_the_run(monkeypatch):
    timing = importlib.import_module("runtime_bench.timing")

    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI unavailable")
    monkeypatch.setattr(timing, "kernel_seconds", broken)
    result = _kernel_clock_run()
    assert result["kernel_clock_error"] == "RuntimeError: CUPTI unavailable"
    assert {row["clock"] for row in result["rows"]} == {"wall", "cpu"}
    assert all(row["rounds"] == 2 for row in result["rows"] if row["clock"] == "wall")


@pytest.mark.parametrize("argv, message", [
    (["--shape", "nonsense"], "unknown --shape 'nonsense'"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
])
def test_bad_runtime_options_are_one_line_usage_errors(argv, message, tmp_path, capsys):
    module = load_tool("bench_runtime")
    with pytest.raises(SystemExit) as stop:
        module.parse([*argv, "--out", str(tmp_path / "r.json")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--pad-to", "8,x"], "--pad-to takes whole numbers >= 0"),
    (["--pad-to", "-3"], "--pad-to takes whole numbers >= 0"),
    (["--shape", "nonsense"], "unknown --shape 'nonsense'"),
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--tokens", "0"], "--tokens must be at least 1, got 0"),
    (["--extra", "-2"], "--extra must be 0 or more, got -2"),
])
def test_bad_bake_width_options_are_one_line_usage_errors_before_any_model_is_built(argv, message, tmp_path,
                                                                                     capsys, monkeypatch):
    module = load_tool("bench_bake_width")
    monkeypatch.setattr(module, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(SystemExit) as stop:
        module.main([*argv, "--out", str(tmp_path / "w.json")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()
