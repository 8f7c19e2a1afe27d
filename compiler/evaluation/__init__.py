"""Stage 6, evaluation: a repair counts only if the target moves and the rest does not.

- :mod:`.suites`: the evaluation suites, each with its metric, better direction and split.
- :mod:`.harness`: :func:`evaluate` runs suites for several arms (base, static, adaptive, ...).
- :mod:`.run`: ``masteer eval`` (:func:`run_eval`) and the end of a compile (:func:`evaluate_compile`).
- :mod:`.likelihood` (teacher-forced scores), :mod:`.bootstrap` (intervals), :mod:`.overlap`
  (compile samples are never evaluated on), :mod:`.report` (typed result, markdown, JSON), :mod:`.plots` (PNG).
- :mod:`.refusal_table`: the compile's quick phrase-judged refusal table, also used to pick a layer.
- :mod:`.gate_report` (where anchors open), :mod:`.prompt_decision` (the per-prompt arm), :mod:`.fluency`,
  :mod:`.shift` (rewrite-family suites), :mod:`.separability` (probe ceilings), :mod:`.inspection`
  (``masteer inspect``).
"""

from .bootstrap import Estimate, ItemValues, bootstrap, paired_difference
from ..capture.cache import ResultCache
from .harness import Arm, evaluate
from .overlap import SplitOverlapError, check_overlap
from .refusal_table import (Evaluation, GroupResult, binomial_halfwidth, breakdown_markdown, evaluate_refusal,
                            wilson_interval, within_interval_rows)
from .report import EvalReport
from .report_files import write_report
from .run import EvalOptions, card_metrics, evaluate_compile, render_report, run_eval
from .suites import DEFAULT_SUITES, SUITES, Suite, compile_suites, load_suites

__all__ = ["Arm", "DEFAULT_SUITES", "Estimate", "EvalOptions", "EvalReport", "Evaluation", "GroupResult",
           "ItemValues", "ResultCache", "SUITES", "SplitOverlapError", "Suite", "binomial_halfwidth", "bootstrap",
           "breakdown_markdown",
           "wilson_interval", "within_interval_rows",
           "card_metrics", "check_overlap", "compile_suites", "evaluate", "evaluate_compile", "evaluate_refusal",
           "load_suites", "paired_difference", "render_report", "run_eval", "write_report"]
