"""``masteer push`` and the model card: the real ``huggingface_hub`` client pushes to a loopback server that keeps
what it receives (tests/fake_hub.py); every file arrives byte for byte, big ones through LFS, and the card's
front matter parses with ``huggingface_hub.ModelCard`` with the compile report's held-out results in it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from fake_hub import FakeHub
from masteer.compiler import cli
from masteer.compiler.lowering.card import BAKED, LORA, identify, program_in_words, shipment_card
from masteer.compiler.lowering.hub import push
from masteer.compiler.lowering.lora import save_lora
from masteer.runtime import MasteerError, bake
from tiny_models import HIDDEN, byte_tokenizer, random_adapter, tiny_model

TOKEN = "hf_test_token"
REPORT = {"recipe": "refusal", "samples": {"hash": "dafb233317a32a22"},
          "evaluation": {"refusal": {"arms": ["base", "static", "adaptive"], "groups": [
              {"group": "harmful", "direction": "up", "n": 190, "rates": {"base": 0.1, "static": 0.632, "adaptive": 0.695}},
              {"group": "benign-edgy", "direction": "same", "n": 60, "rates": {"base": 0.033, "adaptive": 0.083}}]}}}


@pytest.fixture(autouse=True)
def _client(monkeypatch):
    """The client as a user runs it, minus Xet (not served here: LFS is the route every Hub also accepts)."""
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def adapter_dir(tmp_path):
    model = tiny_model("llama")
    adapter = random_adapter(model, additive_layer=1)
    return adapter.save(tmp_path / "adapter", extra_files={"compile_report.json": json.dumps(REPORT)})


def local_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_sends_every_file_byte_for_byte_with_the_card(adapter_dir):
    from huggingface_hub import ModelCard
    with FakeHub(TOKEN, lfs_threshold=2500) as hub:
        url = push(adapter_dir, "me/refusal-steer", private=True, revision="v1", endpoint=hub.endpoint, token=TOKEN)
    stored = hub.files("me/refusal-steer", "v1")
    local = local_files(adapter_dir)
    assert set(stored) == set(local)
    assert all(stored[name] == local[name] for name in local if name != "README.md")
    assert stored["README.md"].decode() == shipment_card(adapter_dir, "me/refusal-steer")
    assert hub.repos["me/refusal-steer"].private and url.endswith(hub.repos["me/refusal-steer"].commits[-1])
    big = [n for n, data in local.items() if n != "README.md" and len(data) >= 2500]
    assert big and len(hub.lfs_uploads) >= len(big), "files above the threshold went through LFS"
    assert any(len(data) < 2500 for data in local.values()), "and small ones inline"
    card = ModelCard(stored["README.md"].decode())
    assert card.data.base_model == "tiny-llama" and card.data.library_name == "masteer"
    assert {"masteer", "steering", "tiny-issue"} <= set(card.data.tags)
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values["refusal on harmful (n=190, should go up), %"] == 69.5
    assert values["refusal on harmful (n=190, should go up), base model, %"] == 10.0
    assert values["refusal on benign-edgy (n=60, should go same), %"] == 8.3
    assert "layer 0: `s0_0` adds a random direction (strength 2) only where its anchor opens" in card.text
    assert "layer 1: `always_on` adds a mean-diff direction (strength 1) to the MLP output on every token" in card.text
    assert "SteeredModel.from_pretrained" in card.text and "masteer bake" in card.text


def test_a_second_push_updates_main_and_the_repository_stays(adapter_dir):
    with FakeHub(TOKEN) as hub:
        push(adapter_dir, "me/x", endpoint=hub.endpoint, token=TOKEN)
        (adapter_dir / "notes.txt").write_text("second")
        push(adapter_dir, "me/x", endpoint=hub.endpoint, token=TOKEN)
    assert hub.files("me/x")["notes.txt"] == b"second" and len(hub.repos["me/x"].commits) == 2
    assert not hub.repos["me/x"].private


def test_cards_of_a_lora_and_a_baked_checkpoint_say_how_to_load_them(tmp_path):
    from huggingface_hub import ModelCard
    model = tiny_model("gpt2")
    adapter = random_adapter(model, counts={}, additive_layer=1)
    adapter.add_ablation("no_refusal", direction=torch.randn(HIDDEN), normalize=True)
    lora = save_lora(model, adapter, tmp_path / "lora")
    card = ModelCard(shipment_card(lora, "me/lora"))
    assert identify(lora).kind == LORA and card.data.library_name == "peft" and "lora" in card.data.tags
    assert "PeftModel.from_pretrained(base, 'me/lora')" in card.text and "merge_and_unload" in card.text
    assert "every write into the residual stream" in card.text and "on every token" in card.text
    assert card.data.eval_results is None, "no compile report, no model-index"
    baked = bake(tiny_model("llama"), random_adapter(tiny_model("llama")), tmp_path / "baked",
                 tokenizer=byte_tokenizer())
    card = ModelCard(shipment_card(baked, "me/baked", report=None))
    assert identify(baked).kind == BAKED and card.data.library_name == "transformers"
    assert "AutoModelForCausalLM.from_pretrained('me/baked')" in card.text and "vllm serve me/baked" in card.text
    report = tmp_path / "compile_report.json"
    report.write_text(json.dumps(REPORT))
    assert len(ModelCard(shipment_card(baked, "me/baked", report=report)).data.eval_results) == 4


def test_the_program_in_words_counts_a_gate_once():
    config = {"layers": {"14": [
        {"name": "p", "kind": "neuron", "strength": 2.0, "algorithm": "logistic_probe", "group": "p"},
        {"name": "p:cap", "kind": "neuron", "strength": 2.0, "algorithm": "logistic_probe", "group": "p"}]}}
    (line,) = program_in_words(config)
    assert line.startswith("layer 14: `p` adds a logistic_probe direction (strength 2)") and "2 gate neurons" in line


def test_push_errors_are_one_line_and_bad_input_sends_nothing(adapter_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants
    with FakeHub(TOKEN) as hub:
        with pytest.raises(MasteerError, match="needs a namespace"):
            push(adapter_dir, "no-namespace", endpoint=hub.endpoint, token=TOKEN)
        with pytest.raises(MasteerError, match="is not valid"):
            push(adapter_dir, "me/bad name", endpoint=hub.endpoint, token=TOKEN)
        (tmp_path / "empty").mkdir()
        with pytest.raises(MasteerError, match="holds no masteer adapter"):
            push(tmp_path / "empty", "me/x", endpoint=hub.endpoint, token=TOKEN)
        with monkeypatch.context() as offline:
            offline.setenv("HF_HUB_OFFLINE", "1")
            offline.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
            with pytest.raises(MasteerError, match="unset it to push"):
                push(adapter_dir, "me/x", endpoint=hub.endpoint, token=TOKEN)
        assert hub.calls == []
        with pytest.raises(MasteerError) as err:
            push(adapter_dir, "me/x", endpoint=hub.endpoint, token="wrong")
        assert "\n" not in str(err.value) and "401" in str(err.value)
    assert "me/x" not in hub.repos


def test_push_through_the_cli_with_the_usual_token_and_endpoint_settings(adapter_dir, monkeypatch):
    with FakeHub(TOKEN) as hub:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result = CliRunner().invoke(cli.main, ["push", str(adapter_dir), "me/cli", "--revision", "v2"])
    assert result.exit_code == 0, result.output
    assert "pushed" in result.output and set(hub.files("me/cli", "v2")) == set(local_files(adapter_dir))
