"""The evaluation on the embedded SmolLM2-135M-Instruct: capability suites see a blunt edit, the judge holds.

One short run (measured 13 minutes on 2 cores shared with three other jobs; no time is asserted
here, tools/bench_eval.py measures time): the base model and the base model with a random
always-on vector at layer 12, on a few items of the refusal, MMLU, perplexity and KL suites.
"""

from __future__ import annotations

import pytest
import torch

from masteer.compiler.evaluation import evaluate
from masteer.compiler.common.models import load_model
from masteer.runtime import SteeringAdapter, host_layout, model_fingerprint
from masteer.runtime.hosts import activation_name

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def report():
    torch.set_num_threads(2)
    loaded = load_model()
    model = loaded.model
    adapter = SteeringAdapter(base_model_name_or_path=loaded.name, fingerprint=model_fingerprint(model),
                              host_form=host_layout(model).form, activation=activation_name(model))
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    adapter.add_additive(12, "random-static", direction=direction / direction.norm(), strength=20.0,
                         issue="test", algorithm="random")
    return evaluate(model, loaded.tokenizer, {"base": None, "random-static": adapter},
                   ["refusal", "mmlu", "perplexity", "kl"], n={"refusal": 8, "mmlu": 40, "perplexity": 10, "kl": 10},
                   max_new_tokens=16, progress=False, n_boot=300)


def test_capability_suites_detect_a_blunt_edit(report):
    kl, ppl = report.suite("kl"), report.suite("perplexity")
    assert kl.arms["base"].estimate.value == 0.0
    assert kl.arms["random-static"].estimate.low > 0.01, report.markdown()
    assert ppl.arms["random-static"].estimate.value > ppl.arms["base"].estimate.value, report.markdown()
    assert kl.verdict("random-static") == "worse"


def test_base_model_numbers_are_plausible(report):
    # 4-option MMLU by likelihood: a 135M model sits near chance; the interval must cover its value
    mmlu = report.suite("mmlu").arms["base"].estimate
    assert 0.1 <= mmlu.value <= 0.6 and mmlu.low <= mmlu.value <= mmlu.high
    assert 1.0 < report.suite("perplexity").arms["base"].estimate.value < 100.0
    assert report.judge.accuracy >= 0.9
