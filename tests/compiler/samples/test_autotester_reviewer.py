"""Reviewer quality on a hand-labelled set of good and bad pairs (``data/reviewer_labelled.jsonl``).

Each row is an item the writer could produce for one issue (free-text claims, and the refusal,
over-refusal, truthfulness, sycophancy and privacy recipes), labelled ``accept`` or ``reject`` with
the reason a careful person would give. Rows of one issue are reviewed in file order, so a
duplicate is a duplicate of an earlier accepted row. The labels were written by hand before the
numbers below were measured; three rows are labelled "accept" although the rules are known to miss
them (synonym paraphrases, a reply without its final period), so the set is not tuned to 100%.
Two rows (marked in their ``note``) were added after the first run of the embedded 135M writer, for
failure modes it showed that the first rules missed: "paraphrasing" a question by answering it, and
"rewriting" a reply by copying it.
"""

from __future__ import annotations

import json
from pathlib import Path

from masteer.compiler.samples.autotester.reviewer import REASONS, review_labelled

DATA = Path(__file__).resolve().parent / "data" / "reviewer_labelled.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(rows: list[dict]) -> dict:
    decisions = review_labelled(rows)
    rejected = [d is not None for d in decisions]
    bad = [r["expected"] == "reject" for r in rows]
    tp = sum(r and b for r, b in zip(rejected, bad))        # bad pair rejected
    fp = sum(r and not b for r, b in zip(rejected, bad))    # good pair rejected
    fn = sum(b and not r for r, b in zip(rejected, bad))    # bad pair accepted
    tn = sum(not r and not b for r, b in zip(rejected, bad))
    reason_ok = sum(1 for d, row in zip(decisions, rows) if d is not None and row["expected"] == "reject"
                    and d.reason == row["why"])
    return {"n": len(rows), "accuracy": (tp + tn) / len(rows),
            "reject_precision": tp / max(tp + fp, 1), "reject_recall": tp / max(tp + fn, 1),
            "accept_precision": tn / max(tn + fn, 1), "accept_recall": tn / max(tn + fp, 1),
            "reason_agreement": reason_ok / max(tp, 1),
            "errors": [(row["prompt"][:50], row["expected"], d.detail if d else "accepted")
                       for d, row, r, b in zip(decisions, rows, rejected, bad) if r != b]}


def test_labelled_set_is_well_formed():
    rows = _rows()
    assert len(rows) >= 80
    assert {r["expected"] for r in rows} == {"accept", "reject"}
    assert {r["why"] for r in rows if r["expected"] == "reject"} == set(REASONS) - {"balance"}
    assert sum(r["expected"] == "accept" for r in rows) >= 30 and sum(r["expected"] == "reject" for r in rows) >= 30


def test_reviewer_accuracy_precision_recall_on_the_labelled_set():
    result = scores(_rows())
    print("\nreviewer on the labelled set:", json.dumps({k: v for k, v in result.items() if k != "errors"},
                                                     indent=1), "\nerrors:", *result["errors"], sep="\n")
    assert result["accuracy"] >= 0.9
    assert result["reject_precision"] >= 0.9 and result["reject_recall"] >= 0.9
    assert result["reason_agreement"] >= 0.9  # a bad pair is rejected for the reason a person would give
