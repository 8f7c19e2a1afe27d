"""Data lost: an output folder is never deleted or replaced unless the user asked for it (``--overwrite``), and
then only one masteer wrote, never an input of the same command or a folder holding one; a failed rename leaves
no temporary folder and the old folder in place."""

from __future__ import annotations

import os
import shutil

import pytest

from bad_input_helpers import invoke, one_line_error, tree_digest

import masteer.compiler.common.models as models
from masteer.compiler import cli
from masteer.runtime.atomic import atomic_directory
from masteer.runtime.errors import MasteerError
from masteer.runtime.output_folder import check_output_folder, check_report_folder


def _user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "notes").mkdir()
    (path / "notes" / "n.txt").write_text("more")
    return path


REAL_LOAD_MODEL = models.load_model


def _no_model(*args, **kwargs):
    raise AssertionError("the output folder must be checked before a model loads")


def _refused_bake(adapter, model, out, *flags) -> str:
    """``bake`` is refused in one line before a model loads, and ``out`` is byte for byte as it was."""
    before = tree_digest(out)
    line = one_line_error(invoke(cli.main, ["bake", adapter, "--model", model, "--out", out, *flags]))
    assert tree_digest(out) == before
    return line


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    """Every refusal here comes before a model loads."""
    monkeypatch.setattr(models, "load_model", _no_model)


def test_bake_into_an_existing_user_folder_is_refused_and_keeps_its_files(adapter_dir, model_dir, tmp_path):
    out = _user_folder(tmp_path / "mine")
    line = _refused_bake(adapter_dir, model_dir, out)
    assert str(out) in line and "--overwrite" in line
    assert sorted(os.listdir(tmp_path)) == ["mine"]


def test_overwrite_does_not_replace_a_folder_masteer_did_not_write(adapter_dir, model_dir, tmp_path):
    out = _user_folder(tmp_path / "mine")
    assert "not written by masteer" in _refused_bake(adapter_dir, model_dir, out, "--overwrite")


def test_bake_onto_its_own_adapter_is_refused(adapter_dir, model_dir):
    assert "also an input" in _refused_bake(adapter_dir, model_dir, adapter_dir, "--overwrite")


def test_bake_onto_the_parent_of_its_adapter_is_refused(adapter_dir, model_dir, tmp_path):
    parent = tmp_path / "parent"
    shutil.copytree(adapter_dir, parent / "adapter")
    (parent / "other.txt").write_text("keep me")
    line = _refused_bake(parent / "adapter", model_dir, parent, "--overwrite")
    assert "holds an input" in line and (parent / "other.txt").read_text() == "keep me"


def test_bake_onto_its_model_folder_is_refused(adapter_dir, model_dir):
    assert "also an input" in _refused_bake(adapter_dir, model_dir, model_dir, "--overwrite")


def test_overwrite_replaces_a_checkpoint_masteer_baked(adapter_dir, model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load_model", REAL_LOAD_MODEL)   # this one bakes for real
    out = tmp_path / "baked"
    assert invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", out]).exit_code == 0
    first = tree_digest(out)
    one_line_error(invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", out]))  # no --overwrite
    assert tree_digest(out) == first
    result = invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", out, "--overwrite",
                               "--scale", "0.5"])
    assert result.exit_code == 0, result.output
    assert tree_digest(out) != first and '"baked_scale": 0.5' in (out / "masteer_program.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["baked"]  # no temporary or old folder left beside it


@pytest.mark.parametrize("command, prefix", [(cli.compile_command, []), (cli.main, ["compile"])],
                         ids=["masteer-compile", "masteer compile"])
def test_compile_into_a_user_folder_or_its_add_to_adapter_is_refused_before_work(command, prefix, adapter_dir,
                                                                                 tmp_path):
    out = _user_folder(tmp_path / "mine")
    before = tree_digest(out)
    line = one_line_error(invoke(command, prefix + ["refusal", "--out", out]))
    assert "--overwrite" in line and tree_digest(out) == before
    adapter_before = tree_digest(adapter_dir)
    line = one_line_error(invoke(command, prefix + ["refusal", "--add-to", adapter_dir, "--out", adapter_dir,
                                                    "--overwrite"]))
    assert "also an input" in line and tree_digest(adapter_dir) == adapter_before


def test_eval_out_holding_user_files_is_refused(model_dir, tmp_path):
    out = _user_folder(tmp_path / "mine")
    before = tree_digest(out)
    line = one_line_error(invoke(cli.main, ["eval", "--model", model_dir, "--suite", "kl", "--out", out]))
    assert "not a masteer report" in line and tree_digest(out) == before
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "eval_report.json").write_text("{}")
    assert check_report_folder(tmp_path / "report", ["eval_report.json"]) == tmp_path / "report"  # resumable


def test_a_failed_rename_keeps_the_old_folder_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_config.json").write_text('{"format": "masteer-adapter"}')
    before = tree_digest(target)
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):  # the second rename (temporary -> target) fails, as on a read-only folder
        calls.append((src, dst))
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        with atomic_directory(target) as tmp:
            (tmp / "big.safetensors").write_bytes(b"\0" * 100_000)
    assert sorted(os.listdir(tmp_path)) == ["adapter"] and tree_digest(target) == before


def test_a_failed_first_rename_leaves_no_temporary_folder(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    target.mkdir()
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    with pytest.raises(OSError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_bytes(b"\0" * 1000)
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_out_that_is_a_symlink_to_an_input_is_refused(adapter_dir, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(adapter_dir, target_is_directory=True)
    with pytest.raises(MasteerError, match="also an input"):
        check_output_folder(link, inputs=[adapter_dir], overwrite=True)


def test_inspect_json_onto_a_file_of_its_adapter_is_refused(adapter_dir, model_dir):
    before = tree_digest(adapter_dir)
    line = one_line_error(invoke(cli.main, ["inspect", adapter_dir, "hello", "--model", model_dir, "--json",
                                            adapter_dir / "adapter_config.json"]))
    assert "would replace a file of this command's input" in line
    assert tree_digest(adapter_dir) == before


def test_run_compile_from_python_keeps_a_user_folder_as_the_command_line_does(tmp_path):
    from masteer.compiler.compile import AdaptiveOptions, run_compile
    from masteer.compiler.pipeline import CompileOptions
    out = _user_folder(tmp_path / "mine")
    before = tree_digest(out)
    with pytest.raises(MasteerError, match=r"out .*mine exists and is not empty; pass overwrite=True"):
        run_compile(CompileOptions(progress=False), AdaptiveOptions(), out)
    with pytest.raises(MasteerError, match="not written by masteer.*even with overwrite=True"):
        run_compile(CompileOptions(progress=False), AdaptiveOptions(), out, overwrite=True)
    assert tree_digest(out) == before


def test_measure_into_a_user_folder_is_refused_before_work(tmp_path):
    out = _user_folder(tmp_path / "mine")
    (out / "samples.jsonl").write_text("the user's own samples\n")   # a name measure writes
    before = tree_digest(out)
    line = one_line_error(invoke(cli.main, ["measure", "claims to be a human", "--out", out]))
    assert "not a masteer report" in line and "measure_report.json" in line and tree_digest(out) == before
