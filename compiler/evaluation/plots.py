"""PNG plots of an evaluation report: effect vs drift per arm, and per-suite bars with intervals.

- ``effect_vs_drift.png``: one point per arm (strategy). x = drift, the mean next-token KL from the
  base model on neutral prompts (suite ``kl``); y = effect, the change from base of each target
  suite, in the suite's good direction. Error bars are the bootstrap intervals. A good repair sits
  high and to the left; a static vector typically sits far to the right.
- ``suites.png``: one panel per suite, one bar per arm, error bars from the bootstrap intervals,
  the arrow in the title says which way is better.

matplotlib is imported here only (with the non-interactive Agg backend), so nothing else in the
evaluation needs it.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

from masteer.runtime.atomic import _umask

from .report import EvalReport, _is_rate

EFFECT_PLOT, SUITES_PLOT = "effect_vs_drift.png", "suites.png"
DRIFT_SUITE = "kl"


def _write_bytes(path: Path, data: bytes) -> Path:
    """Atomic: a temporary sibling renamed into place (with an ordinary file's mode, as the runtime's text writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _scale(suite: dict) -> float:
    return 100.0 if _is_rate(suite) else 1.0


def effect_vs_drift(report: EvalReport) -> bytes | None:
    """The plot as PNG bytes, or None when the report has no target suite or no drift suite."""
    targets = [s for s in report.suites if s.role == "target"]
    drift = next((s for s in report.suites if s.name == DRIFT_SUITE), None)
    if not targets or drift is None:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = "osD^v<>"
    for k, target in enumerate(targets):
        sign = 1.0 if target.suite["better"] == "higher" else -1.0
        scale = _scale(target.suite)
        for j, arm in enumerate(report.arms):
            if arm not in target.arms or arm not in drift.arms:
                continue
            d = drift.arms[arm].estimate
            e = target.arms[arm].delta
            y, ylo, yhi = (0.0, 0.0, 0.0) if e is None else (e.value, e.low, e.high)
            ylo, yhi = sorted((sign * ylo * scale, sign * yhi * scale))   # flipped when lower is better
            y = sign * y * scale
            ax.errorbar([d.value], [y], xerr=[[d.value - d.low], [d.high - d.value]], yerr=[[y - ylo], [yhi - y]],
                        fmt=markers[k % len(markers)], color=f"C{j}", capsize=3,
                        label=f"{arm}" + (f" · {target.name}" if len(targets) > 1 else ""))
            ax.annotate(arm, (d.value, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    unit = " (points)" if all(_is_rate(t.suite) for t in targets) else ""
    ax.set_xlabel(f"drift: {drift.suite['metric']} on neutral prompts")
    ax.set_ylabel(f"effect: change from base, good direction{unit}")
    ax.set_title("effect vs drift per arm" + (f" ({targets[0].name})" if len(targets) == 1 else ""))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8, loc="best")
    data = _png(fig)
    plt.close(fig)
    return data


def suite_bars(report: EvalReport) -> bytes:
    plt = _pyplot()
    count = len(report.suites)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, suite in zip(axes.flat, report.suites):
        scale = _scale(suite.suite)
        arms = [a for a in report.arms if a in suite.arms]
        values = [suite.arms[a].estimate for a in arms]
        heights = [e.value * scale for e in values]
        errors = [[max(0.0, (e.value - e.low) * scale) for e in values], [max(0.0, (e.high - e.value) * scale) for e in values]]
        ax.bar(range(len(arms)), heights, yerr=errors, capsize=4, color=[f"C{report.arms.index(a)}" for a in arms])
        ax.set_xticks(range(len(arms)), arms, fontsize=8)
        arrow = "↑" if suite.suite["better"] == "higher" else "↓"
        unit = " (%)" if scale == 100.0 else ""
        ax.set_title(f"{suite.name}: {suite.suite['metric']}{unit} {arrow}\n(n {suite.suite['n']}, should: {suite.expected})",
                     fontsize=9)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def save_plots(report: EvalReport, out: str | os.PathLike) -> dict[str, Path]:
    out = Path(out)
    paths = {"suites_png": _write_bytes(out / SUITES_PLOT, suite_bars(report))}
    effect = effect_vs_drift(report)
    if effect is not None:
        paths["effect_png"] = _write_bytes(out / EFFECT_PLOT, effect)
    return paths
