"""Tracebacks: one handler at the top of both ``masteer`` and ``masteer-compile`` turns a MasteerError, an
OSError, a click usage error or Ctrl-C (start-up included) into one line and a non-zero exit; ``--debug`` or
``MASTEER_DEBUG=1`` adds the traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_input_helpers import invoke, one_line_error

import masteer.compiler.samples.recipes as recipes
from masteer.compiler import cli
from masteer.runtime.errors import MasteerError

COMMANDS = [pytest.param(cli.compile_command, [], id="masteer-compile"),
            pytest.param(cli.main, ["compile"], id="masteer-compile-verb")]


def _raising(exc: BaseException):
    def raise_it(*args, **kwargs):
        raise exc
    return raise_it


@pytest.mark.parametrize("exc, code, words", [
    (MasteerError("recipe x.toml: field 'issue' is missing"), 1, ["x.toml", "'issue'"]),
    (PermissionError(13, "Permission denied", "/recipes"), 1, ["Permission denied", "/recipes"]),
    (KeyboardInterrupt(), 130, ["Interrupted"]),
    (RuntimeError("unexpected\nsecond line"), 1, ["internal error", "RuntimeError", "unexpected; second line",
                                                  "--debug"]),
], ids=["masteer-error", "os-error", "ctrl-c", "internal-error"])
def test_every_error_is_one_line_with_its_exit_status(monkeypatch, exc, code, words):
    monkeypatch.setattr(recipes, "builtin_recipes", _raising(exc))
    result = invoke(cli.main, ["recipes"])
    if isinstance(exc, KeyboardInterrupt):
        assert result.exit_code == code and "Traceback" not in result.output
        assert [line for line in result.output.splitlines() if line.strip()] == [
            "Interrupted (Ctrl-C); no output folder is left half-written."]
        return
    line = one_line_error(result, code)
    for word in words:
        assert word in line


@pytest.mark.parametrize("command, prefix", COMMANDS)
def test_usage_errors_are_one_line_with_status_2(command, prefix, tmp_path):
    line = one_line_error(invoke(command, prefix + ["refusal", "--out", tmp_path / "a", "--seed", "x"]), 2)
    assert "'--seed'" in line and "--help" in line
    line = one_line_error(invoke(cli.main, ["bake", "adapter"]), 2)
    assert "Missing option" in line and "masteer bake --help" in line


@pytest.mark.parametrize("how", ["flag-after-verb", "flag-before-verb", "environment"])
def test_debug_shows_the_traceback(monkeypatch, how):
    monkeypatch.setattr(recipes, "builtin_recipes", _raising(MasteerError("broken recipe folder")))
    args = {"flag-after-verb": ["recipes", "--debug"], "flag-before-verb": ["--debug", "recipes"],
            "environment": ["recipes"]}[how]
    result = invoke(cli.main, args, env={"MASTEER_DEBUG": "1"} if how == "environment" else {"MASTEER_DEBUG": ""})
    assert result.exit_code == 1
    assert "Traceback" in result.output and result.output.strip().splitlines()[-1] == "Error: broken recipe folder"


def test_masteer_compile_takes_debug_too(tmp_path):
    result = invoke(cli.compile_command, ["no-such-recipe-or-issue.toml", "--out", tmp_path / "a", "--debug"])
    assert result.exit_code == 1 and "Traceback" in result.output


def test_the_cli_module_starts_without_torch():
    """So a Ctrl-C during start-up finds the handler in place: the heavy imports happen inside a command."""
    code = "import sys, masteer.compiler.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch loading")
def test_ctrl_c_while_torch_loads_is_one_line(adapter_dir, tmp_path):
    script = Path(sys.executable).with_name("masteer")
    # as a foreground command: a job started in the background by a non-interactive shell (how a CI script may
    # run the suite) inherits SIGINT ignored, and Python keeps it ignored in its children
    process = subprocess.Popen([str(script), "bake", str(adapter_dir), "--out", str(tmp_path / "b")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "MASTEER_DEBUG": ""},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:   # wait until torch's library is mapped
        try:
            if "libtorch" in Path(f"/proc/{process.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Interrupted (Ctrl-C)" in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "Interrupted (Ctrl-C); no output folder is left half-written."]
    assert not (tmp_path / "b").exists()


def test_a_closed_output_pipe_is_silent(monkeypatch):
    """``masteer recipes | head -1``: the reader went away; no error line, no traceback, status 1."""
    monkeypatch.setattr(recipes, "builtin_recipes", _raising(BrokenPipeError(32, "Broken pipe")))
    result = invoke(cli.main, ["recipes"])
    assert result.exit_code == 1 and result.output.strip() == ""
