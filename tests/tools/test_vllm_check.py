"""The pure parts of tools/vllm_check.py and the tools/engine_check.py it shares with the llama.cpp check (no vLLM needed): token agreement, the stop-token trim, argument errors,
the one-line error when vLLM's venv is missing, and a failing vLLM run reported in one line.

tools/ is not a package on the path: the script is loaded from its file."""

from __future__ import annotations

import json

import pytest

from tool_scripts import load_tool

vc = load_tool("vllm_check")
import engine_check as ec  # noqa: E402  (on the path once the check is loaded: tools/engine_check.py)


def test_agreement_counts_identical_answers_and_the_mean_common_prefix():
    reference = [[1, 2, 3], [4, 5, 6, 7], [8]]
    other = [[1, 2, 3], [4, 5, 9, 7], [8, 1]]
    assert vc.agreement(reference, other) == {"identical": 1, "n": 3, "mean_common_prefix": round((3 + 2 + 1) / 3, 2)}
    assert vc.agreement(reference, reference)["identical"] == 3
    assert ec.common_prefix([], [1]) == 0
    with pytest.raises(ValueError, match="as many answers"):
        vc.agreement([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="at least one"):
        vc.agreement([], [])


def test_trim_cuts_at_the_first_stop_token_so_both_engines_answers_have_one_form():
    assert ec.trim([5, 6, 2, 0, 0], [2]) == [5, 6]     # transformers: eos kept, padding after
    assert ec.trim([5, 6, 7], [2]) == [5, 6, 7]        # no stop: all of it
    assert ec.trim([9, 5], {9, 2}) == []
    assert vc.median([3.0, 1.0, 2.0]) == 2.0 and vc.median([4.0, 1.0]) == 2.5


def test_split_and_summary_report_vllm_against_transformers_and_the_throughput_ratio():
    assert vc.split([[1], [2], [3]], {"harmful": 2, "benign": 1}) == {"harmful": [[1], [2]], "benign": [[3]]}
    rows = []
    for arm, tps in (("base", 100.0), ("baked", 90.0)):
        row = vc.row_for(arm, "vllm", "float32", [[1, 2], [3]], [[1, 2], [3, 4]], [[1, 2], [3, 4]],
                         {"harmful": 1, "benign": 1}, decode=lambda ids: "I cannot" if ids == [1, 2] else "Sure",
                         is_refusal=lambda text: text.startswith("I cannot"), seconds=1.0)
        row["throughput"] = {"median_tokens_per_second": tps}
        rows.append(row)
    assert rows[0]["harmful_refusal"] == 1.0 and rows[0]["benign_refusal"] == 0.0
    assert rows[0]["vs_transformers_same_dtype"]["all"] == {"identical": 1, "n": 2, "mean_common_prefix": 1.5}
    rows.append(vc.row_for("base", "transformers", "bfloat16", [[1, 9], [3, 4]], [[1, 9], [3, 4]], [[1, 2], [3, 4]],
                           {"harmful": 1, "benign": 1}, decode=str, is_refusal=lambda text: False, seconds=1.0))
    out = vc.summary(rows)
    assert out["transformers_base_bfloat16_vs_float32"] == {"identical": "1/2", "mean_common_prefix": 1.5}
    assert out["base_float32"]["identical"] == "1/2"
    assert out["throughput_baked_over_base_float32"] == 0.9


@pytest.fixture
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("")
    return folder


@pytest.mark.parametrize("extra, message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--rounds", "-1"], "--rounds must be 0 or more"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--dtypes", "float32,float16"], "--dtypes takes float32, bfloat16; got float16"),
])
def test_argument_errors_are_one_line(adapter, extra, message, capsys):
    with pytest.raises(SystemExit) as stop:
        vc.parse_args(["--adapter", str(adapter), *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_an_adapter_without_samples_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        vc.parse_args(["--adapter", str(tmp_path)])
    assert "has no samples.jsonl" in capsys.readouterr().err


def test_a_missing_vllm_venv_stops_with_one_line_naming_the_setup_script(adapter, tmp_path, capsys):
    missing = tmp_path / "no-venv" / "bin" / "python"
    assert vc.main(["--adapter", str(adapter), "--vllm-python", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("Error: no vLLM environment") and "bash tools/vllm_setup.sh" in err and str(missing) in err
    assert vc.DEFAULT_VLLM_PYTHON.parts[-3:] == (".venv-vllm", "bin", "python")


def test_a_failing_vllm_run_is_reported_with_its_last_error_line(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading...' >&2\necho 'RuntimeError: no kernel for this head size' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(vc.CheckError, match=r"vLLM failed on baked \(bfloat16\): RuntimeError: no kernel"):
        vc.run_vllm(fake, tmp_path / "baked", "bfloat16", [[1, 2]], [2], 4, 0, tmp_path, timeout=30)
    job = json.loads((tmp_path / "vllm-job-baked-bfloat16.json").read_text())
    assert job == {"model": str(tmp_path / "baked"), "dtype": "bfloat16", "prompts": [[1, 2]], "stop_token_ids": [2],
                   "max_new_tokens": 4, "rounds": 0}
