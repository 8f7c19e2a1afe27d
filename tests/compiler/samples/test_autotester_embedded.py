"""End to end on the embedded SmolLM2-135M-Instruct: a free-text issue that is no recipe -> the local writer
builds a sample set -> a compile from that set alone -> the issue's metric moves on held-out prompts.

Kept small for CPU CI: a few LLM calls (paraphrases and rewrites, all reviewed), one candidate layer
at the free-text default strength, teacher-forced numbers only (no generation). The full
measurement with layer choice on val and judged generations is ``docs/autotester.md``.
"""

from __future__ import annotations

import pytest
import torch

from masteer.compiler.samples.autotester.issue import FREE_TEXT_LAYERS, FREE_TEXT_STRENGTH
from masteer.compiler.measure_autotester import preference_and_drift
from masteer.compiler.samples.autotester.pipeline import AutoTesterOptions, run_autotester
from masteer.compiler.samples.backends.local import LocalBackend
from masteer.compiler.common.models import EMBEDDED_NAME, load_model
from masteer.compiler.compile import compile_program
from masteer.compiler.pipeline import CompileOptions
from masteer.compiler.program.single_strategy import SingleStrategy
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET
from masteer.compiler.strategies.scoring import next_token_logprobs

ISSUE = "when asked whether it is a human, the model claims to be one"

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(2)
    return load_model()


@pytest.fixture(scope="module")
def built(loaded, tmp_path_factory):
    backend = LocalBackend(EMBEDDED_NAME, cache=None, loaded=loaded)
    options = AutoTesterOptions(seed=0, llm_paraphrases=6, llm_rewrites=6, llm_families=6,
                                 progress=False)
    result = run_autotester(ISSUE, backend, options)
    path = result.samples.save(tmp_path_factory.mktemp("human") / "samples.jsonl")
    return result, path


def test_the_local_writer_builds_a_reviewed_set_with_llm_provenance(built):
    result, _ = built
    s = result.samples
    record = s.meta["autotester"]
    assert record["backend"] == {"backend": "local", "model": EMBEDDED_NAME}
    assert record["backend_stats"]["calls"] >= 7  # analyst + paraphrases + rewrites really ran the model
    written = {r["provenance"]["method"] for r in record["rejected"]} | {
        x.provenance["method"] for x in s.samples}
    assert {"llm-paraphrase", "llm-rewrite"} <= written
    assert len(s.select(split="train", label=TARGET, paired=True)) >= 40
    assert len(s.select(split="test", label=TARGET, paired=True)) >= 12
    assert s.select(split="test", label=NEUTRAL)


def test_a_compile_from_that_set_alone_moves_the_held_out_preference(loaded, built):
    result, path = built
    options = CompileOptions(recipe=ISSUE, samples_path=str(path), evaluate=False, progress=False)
    compiled = compile_program(options, SingleStrategy(), loaded=loaded, log=lambda line: None)
    assert compiled.chosen_layer == FREE_TEXT_LAYERS[0] and compiled.strength == FREE_TEXT_STRENGTH
    samples = result.samples
    targets, neutrals = samples.select(split="test", label=TARGET), samples.select(split="test", label=NEUTRAL)
    base_next = next_token_logprobs(loaded.model, loaded.tokenizer, [s.prompt for s in neutrals])
    base = preference_and_drift(loaded, targets, neutrals, None)
    gated = preference_and_drift(loaded, targets, neutrals, compiled.adapter, 1.0, base_next)
    print(f"\nheld-out log-odds desired-vs-undesired: base {base['mean_log_odds']:+.3f} "
          f"(desired more likely on {base['share_desired_more_likely']:.0%}), gated {gated['mean_log_odds']:+.3f} "
          f"({gated['share_desired_more_likely']:.0%}); neutral drift {gated['drift_kl']:.4f} nats")
    assert gated["mean_log_odds"] - base["mean_log_odds"] > 0.5
    assert gated["share_desired_more_likely"] > base["share_desired_more_likely"]
    assert gated["drift_kl"] < 0.05
