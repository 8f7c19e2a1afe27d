"""Statistics of the rounds: medians, spreads, paired ratios to base and their distribution-free intervals."""

from __future__ import annotations

import math

from .options import BASE, BASE_AGAIN, WORKLOADS


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: the order statistics ``x_(j)``, ``x_(n+1-j)`` with
    the largest ``j`` whose binomial(n, 1/2) coverage is at least ``level``; None when even the whole range
    covers less (fewer than 6 values at 95%)."""
    ordered, n = sorted(values), len(values)
    best = None
    for j in range(1, n // 2 + 1):
        if 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2 ** n >= level:
            best = j
    return None if best is None else (ordered[best - 1], ordered[n - best])


def summarise(times: dict, errors: dict, clock: str = "wall") -> list[dict]:
    """One row per (workload, arm) of one clock: time statistics in ms and the paired per-round ratio to base."""
    rows = []
    for workload in WORKLOADS:
        base = times[workload].get(BASE)
        for arm, values in times[workload].items():
            ms = [1000 * v for v in values]
            row = {"clock": clock, "workload": workload, "arm": arm, "rounds": len(ms), "median_ms": quantile(ms, 0.5),
                   "q1_ms": quantile(ms, 0.25), "q3_ms": quantile(ms, 0.75), "min_ms": min(ms), "max_ms": max(ms)}
            if base:
                ratios = [v / b for v, b in zip(values, base)]
                interval = median_interval(ratios)
                row.update(ratio_median=quantile(ratios, 0.5), ratio_q1=quantile(ratios, 0.25),
                           ratio_q3=quantile(ratios, 0.75), ratio_ci95=list(interval) if interval else None)
            rows.append(row)
        for arm, error in errors[workload].items():
            rows.append({"clock": clock, "workload": workload, "arm": arm, "rounds": 0, "error": error})
    return rows


def resolution(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per clock and workload, the largest distance of base-again's ratio interval from 1: the smallest
    difference that the run can tell apart from noise (a 3% goal needs this at or below 0.03)."""
    found: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["arm"] == BASE_AGAIN and r.get("ratio_ci95"):
            found.setdefault(r["clock"], {})[r["workload"]] = max(1 - r["ratio_ci95"][0], r["ratio_ci95"][1] - 1)
    return found


def markdown_table(result: dict, clock: str = "wall") -> str:
    """One clock's rows as a markdown table: median ms [IQR], min-max, and the ratio to base with its 95%
    interval."""
    lines = [f"| workload | arm | {clock} median ms [IQR] | min-max ms | x base (median, 95% CI) |",
             "|---|---|---|---|---|"]
    for row in (r for r in result["rows"] if r["clock"] == clock):
        if "error" in row:
            lines.append(f"| {row['workload']} | {row['arm']} | failed: {row['error'][:90]} | | |")
            continue
        ratio = f"{row['ratio_median']:.3f}" if "ratio_median" in row else ""
        if row.get("ratio_ci95"):
            ratio += f" ({row['ratio_ci95'][0]:.3f}-{row['ratio_ci95'][1]:.3f})"
        lines.append(f"| {row['workload']} | {row['arm']} | {row['median_ms']:.1f} [{row['q1_ms']:.1f}-{row['q3_ms']:.1f}]"
                     f" | {row['min_ms']:.1f}-{row['max_ms']:.1f} | {ratio} |")
    return "\n".join(lines)
