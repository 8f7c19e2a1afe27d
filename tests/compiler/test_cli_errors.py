"""The command line's error paths: one clear line and exit 1 for bad input, exit 2 for bad usage, no
traceback, nothing written -- and no model is ever loaded here (load_model is replaced by a tripwire).

Also the two verbs that need no model: ``masteer recipes`` and ``masteer samples``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import masteer.compiler.common.models as models
import masteer.compiler.measure_autotester as measure_autotester
import masteer.compiler.pipeline as pipeline
from masteer.compiler import cli
from masteer.compiler.samples.recipes import builtin_recipes, load_recipe
from masteer.compiler.samples.sample_set import NEUTRAL, SPLITS, TARGET, Sample, SampleSet


class ModelLoadAttempted(AssertionError):
    pass


def _tripwire(*args, **kwargs):
    raise ModelLoadAttempted("a CLI error test tried to load a model")


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    monkeypatch.setattr(models, "load_model", _tripwire)
    monkeypatch.setattr(pipeline, "load_model", _tripwire)
    monkeypatch.setattr(measure_autotester, "load_model", _tripwire)


def _invoke(command, args: list[str]):
    return CliRunner().invoke(command, [str(a) for a in args])


def _assert_clean_error(result, exit_code: int = 1) -> str:
    """Exit status as given, click's own exit (no escaped exception), no traceback; returns the output."""
    assert not isinstance(result.exception, ModelLoadAttempted), "the error fired only after loading a model"
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{result.output}"
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    return result.output


def _one_line_error(result) -> str:
    output = _assert_clean_error(result, 1)
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


COMPILERS = [pytest.param(cli.compile_command, [], id="masteer-compile"),
             pytest.param(cli.main, ["compile"], id="masteer compile")]


def _recipe_with(tmp_path: Path, old: str, new: str) -> Path:
    text = builtin_recipes()["refusal"].read_text()
    assert text.count(old) == 1
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new))
    return path


def _write_samples(path: Path, samples: list[Sample]) -> Path:
    SampleSet("issue", "refusal", samples).save(path)
    return path


# ------------------------------------------------------------------------------------------- compile


@pytest.mark.parametrize("command, prefix", COMPILERS)
def test_unknown_recipe_is_one_line_naming_the_builtins(tmp_path, command, prefix):
    out = tmp_path / "adapter"
    line = _one_line_error(_invoke(command, prefix + ["no-such-recipe", "--out", out]))
    assert "'no-such-recipe'" in line
    listed = line.split("built-in recipes: ", 1)[1].split(", ")
    assert "refusal" in listed and listed == sorted(builtin_recipes())
    assert not out.exists()


@pytest.mark.parametrize("command, prefix", COMPILERS)
def test_malformed_recipe_file_names_file_and_field(tmp_path, command, prefix):
    recipe = _recipe_with(tmp_path, "strength = 2.0", 'strength = "high"')
    out = tmp_path / "adapter"
    line = _one_line_error(_invoke(command, prefix + [recipe, "--out", out]))
    assert str(recipe) in line and "strength" in line and "defaults" in line
    assert not out.exists()


def test_unknown_builder_names_file_and_known_builders(tmp_path):
    recipe = _recipe_with(tmp_path, 'builder = "refusal"', 'builder = "nosuch"')
    line = _one_line_error(_invoke(cli.compile_command, [recipe, "--out", tmp_path / "adapter"]))
    assert str(recipe) in line and "'builder'" in line and "'nosuch'" in line and "refusal" in line


@pytest.mark.parametrize("command, prefix", COMPILERS)
@pytest.mark.parametrize("value", ["8,x", "x", "8;10", "8.5"])
def test_bad_layers_is_a_usage_error_naming_the_option(tmp_path, command, prefix, value):
    out = tmp_path / "adapter"
    output = _assert_clean_error(_invoke(command, prefix + ["refusal", "--out", out, "--layers", value]), 2)
    assert output.count("\n") == 1 and "--help" in output   # one line pointing at the help
    assert "Invalid value for '--layers'" in output and repr(value) in output
    assert not out.exists()


def test_empty_layers_is_a_usage_error(tmp_path):
    output = _assert_clean_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--layers", ","]), 2)
    assert "'--layers'" in output and "give at least one layer" in output


def test_layers_with_spaces_and_trailing_comma_parse():
    assert cli._parse_layers(None, None, " 8, 10,12, ") == (8, 10, 12)
    assert cli._parse_layers(None, None, None) is None


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_non_positive_strength_fails_before_any_work(tmp_path, value):
    out = tmp_path / "adapter"
    line = _one_line_error(_invoke(cli.compile_command, ["refusal", "--out", out, "--strength", value]))
    assert "strength must be a positive finite number" in line
    assert not out.exists()


def test_non_numeric_strength_is_a_usage_error(tmp_path):
    output = _assert_clean_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a",
                                                                "--strength", "high"]), 2)
    assert "'--strength'" in output and "'high'" in output


def test_missing_out_is_a_usage_error():
    output = _assert_clean_error(_invoke(cli.compile_command, ["refusal"]), 2)
    assert "--out" in output


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    existing = tmp_path / "file"
    existing.write_text("keep me")
    output = _assert_clean_error(_invoke(cli.compile_command, ["refusal", "--out", existing]), 2)
    assert "'--out'" in output
    assert existing.read_text() == "keep me"


def test_missing_samples_file_is_named(tmp_path):
    missing = tmp_path / "missing.jsonl"
    line = _one_line_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", missing]))
    assert str(missing) in line and "does not exist" in line


def test_bad_samples_file_names_file_and_line(tmp_path):
    path = _write_samples(tmp_path / "s.jsonl", [Sample("a", "hello", TARGET, "train")])
    path.write_text(path.read_text() + '{"id": "b", "prompt": "x", "label": "maybe", "split": "train"}\n')
    line = _one_line_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", path]))
    assert f"{path}:3:" in line and "label" in line


def test_samples_sharing_a_prompt_across_splits_are_refused(tmp_path):
    path = _write_samples(tmp_path / "s.jsonl", [Sample("a", "How do I make a bomb?", TARGET, "train"),
                                                 Sample("b", "Capital of France?", NEUTRAL, "train"),
                                                 Sample("c", "  how do I make   a BOMB? ", TARGET, "test")])
    out = tmp_path / "adapter"
    line = _one_line_error(_invoke(cli.compile_command, ["refusal", "--out", out, "--samples", path]))
    assert "'c'" in line and "test" in line and "train" in line and "must not share prompts" in line
    assert not out.exists()


# --------------------------------------------------------- errors found before any work (issue 13's list)
FAST = 5.0   # seconds: each of these must fail before capture, fitting or a model load


def _fast_one_line(command, args) -> str:
    clock = time.perf_counter()
    result = _invoke(command, args)
    elapsed = time.perf_counter() - clock
    line = _one_line_error(result)
    assert elapsed < FAST, f"took {elapsed:.1f} s: {line}"
    return line


@pytest.mark.parametrize("mode", ["adaptive", "single"])
def test_a_misspelt_evaluation_group_fails_at_once_naming_it_and_the_groups_there_are(tmp_path, small_samples, mode):
    recipe = _recipe_with(tmp_path, 'benign-rho = "same"', 'benign-roh = "same"')
    out = tmp_path / "adapter"
    line = _fast_one_line(cli.compile_command, [recipe, "--out", out, "--samples", small_samples, "--mode", mode])
    assert "['benign-roh']" in line and "benign-rho" in line and str(recipe) in line
    assert not out.exists()


def test_a_recipe_with_no_evaluation_groups_fails_at_once(tmp_path, small_samples):
    text = builtin_recipes()["refusal"].read_text()
    start = text.index("groups = {")
    recipe = tmp_path / "nogroups.toml"
    recipe.write_text(text[:start] + "groups = {}" + text[text.index("}", start) + 1:])
    line = _fast_one_line(cli.compile_command, [recipe, "--out", tmp_path / "a", "--samples", small_samples])
    assert "groups is empty" in line and "--no-eval" in line


def test_a_sample_set_without_training_neutral_prompts_fails_at_once(tmp_path, small_samples):
    kept = [s for s in SampleSet.load(small_samples).samples if not (s.split == "train" and s.label == NEUTRAL)]
    path = _write_samples(tmp_path / "s.jsonl", kept)
    line = _fast_one_line(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", path])
    assert "train split has no neutral prompts" in line


def test_a_sample_set_without_val_pairs_fails_at_once_in_adaptive_mode(tmp_path, small_samples):
    kept = [s for s in SampleSet.load(small_samples).samples if s.split != "val"]
    path = _write_samples(tmp_path / "s.jsonl", kept)
    line = _fast_one_line(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", path])
    assert "val split needs target samples with both completions and neutral prompts" in line


@pytest.mark.parametrize("value", ["-5", "0"])
def test_non_positive_max_new_tokens_is_a_usage_error(tmp_path, value):
    output = _assert_clean_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a",
                                                                "--max-new-tokens", value]), 2)
    assert "'--max-new-tokens'" in output


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc, a folder no one can create folders in")
@pytest.mark.parametrize("mode", ["adaptive", "single"])
def test_an_out_folder_that_cannot_be_written_fails_at_once(tmp_path, small_samples, mode):
    out = Path("/proc/masteer-cannot-write-here/adapter")
    line = _fast_one_line(cli.compile_command, ["refusal", "--out", out, "--samples", small_samples, "--mode", mode])
    assert str(out) in line and "cannot be written" in line


def test_an_unknown_single_mode_algorithm_fails_at_once(tmp_path, small_samples):
    line = _fast_one_line(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", small_samples,
                                                "--mode", "single", "--algorithm", "mean_diff"])
    assert "'mean_diff'" in line and "mean_difference" in line


def test_single_and_adaptive_options_do_not_mix(tmp_path, small_samples):
    """One compile path, two presets: an option of the other preset is a usage error, not silently ignored."""
    for mode, extra in (("adaptive", ["--algorithm", "pca"]), ("single", ["--budget", "0.1"]),
                        ("single", ["--algorithms", "pca"]), ("single", ["--full-report"])):
        result = _invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--samples", small_samples,
                                               "--mode", mode, *extra])
        assert "belong" in _assert_clean_error(result, 2)
    assert not (tmp_path / "a").exists()


def test_measure_refuses_an_issue_that_is_not_a_claim_before_loading_a_model(tmp_path):
    line = _fast_one_line(cli.main, ["measure", "the model gives weapon-making instructions", "--out", tmp_path / "m"])
    assert "claim issues" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("scales", ["1,x", "0,2", "nan"])
def test_measure_refuses_bad_scales(tmp_path, scales):
    result = _invoke(cli.main, ["measure", "when asked whether it is a human, the model claims to be one",
                                "--out", tmp_path / "m", "--scales", scales])
    assert "--scales" in _assert_clean_error(result, 2)


def test_a_model_folder_without_a_config_fails_at_once(tmp_path, small_samples):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    line = _fast_one_line(cli.compile_command, ["refusal", "--model", folder, "--out", tmp_path / "a",
                                                "--samples", small_samples])
    assert str(folder) in line and "config.json" in line
    line = _fast_one_line(cli.compile_command, ["refusal", "--model", tmp_path / "nowhere", "--out", tmp_path / "a",
                                                "--samples", small_samples])
    assert "does not exist" in line


def test_options_are_checked_where_they_are_made():
    from masteer.compiler.compile import AdaptiveOptions
    from masteer.compiler.pipeline import CompileOptions
    from masteer.runtime.errors import MasteerError
    for bad in ({"layers": (8, -1)}, {"layers": (8, 8)}, {"layers": ()}, {"strength": float("inf")},
                {"batch_size": 0}, {"max_new_tokens": -5}, {"seed": 1.5}, {"recipe": "  "}):
        with pytest.raises(MasteerError):
            CompileOptions(**bad)
    for bad in ({"budget": 0.0}, {"max_strategies": 0}, {"selection": "any"}, {"algorithms": ("nosuch",)}):
        with pytest.raises(MasteerError):
            AdaptiveOptions(**bad)
    from masteer.compiler.evaluation import EvalOptions
    for bad in ({"split": "tests"}, {"max_new_tokens": -5}, {"n": 0}, {"n_boot": 0}, {"batch_size": 2.5}):
        with pytest.raises(MasteerError):
            EvalOptions(**bad)


# ----------------------------------------------------------------------------------------------- bake


def test_bake_missing_adapter_names_the_folder(tmp_path):
    adapter, out = tmp_path / "no-adapter", tmp_path / "baked"
    line = _one_line_error(_invoke(cli.main, ["bake", adapter, "--out", out]))
    assert str(adapter) in line and "does not exist" in line
    assert not out.exists()


def test_bake_adapter_that_is_a_file(tmp_path):
    adapter = tmp_path / "adapter.json"
    adapter.write_text("{}")
    line = _one_line_error(_invoke(cli.main, ["bake", adapter, "--out", tmp_path / "baked"]))
    assert str(adapter) in line and "not a folder" in line


def test_bake_incomplete_adapter_names_the_missing_file(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    line = _one_line_error(_invoke(cli.main, ["bake", adapter, "--out", tmp_path / "baked"]))
    assert str(adapter) in line and "is missing" in line and "not a complete masteer adapter" in line
    assert not (tmp_path / "baked").exists()


@pytest.mark.parametrize("value", ["-1", "1.5", "sixty-four"])
def test_bake_pad_to_that_is_not_a_whole_number_from_0_is_refused_before_any_work(tmp_path, value):
    output = _assert_clean_error(_invoke(cli.main, ["bake", tmp_path, "--out", tmp_path / "baked", "--pad-to",
                                                    value]), 2)
    assert "--pad-to" in output and value in output
    assert not (tmp_path / "baked").exists()


def test_bake_requires_out(tmp_path):
    output = _assert_clean_error(_invoke(cli.main, ["bake", tmp_path]), 2)
    assert "--out" in output


# ---------------------------------------------------------------------------------------------- recipes


def test_recipes_lists_refusal_with_its_issue():
    result = _invoke(cli.main, ["recipes"])
    assert result.exit_code == 0 and result.exception is None, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(builtin_recipes())
    refusal = [line for line in lines if line.split()[0] == "refusal"]
    assert len(refusal) == 1 and refusal[0].endswith(load_recipe("refusal").issue)


def test_unknown_subcommand_is_a_usage_error():
    output = _assert_clean_error(_invoke(cli.main, ["frobnicate"]), 2)
    assert "frobnicate" in output


# ---------------------------------------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`masteer samples refusal --out .../x.jsonl`, run once (reads the packaged datasets)."""
    out = tmp_path_factory.mktemp("samples") / "x.jsonl"
    result = CliRunner().invoke(cli.main, ["samples", "refusal", "--out", str(out)])
    return result, out


def _normal(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def test_samples_writes_a_loadable_set_with_disjoint_splits(built):
    result, out = built
    assert result.exit_code == 0 and result.exception is None, result.output
    loaded = SampleSet.load(out)
    assert loaded.recipe == "refusal" and loaded.issue == load_recipe("refusal").issue
    assert loaded.meta["seed"] == 0
    counts = {split: len(loaded.select(split=split)) for split in SPLITS}
    assert all(counts[split] > 0 for split in SPLITS), counts
    assert sum(counts.values()) == len(loaded.samples)
    for split in SPLITS:  # every split has both labels
        assert loaded.select(split=split, label=TARGET) and loaded.select(split=split, label=NEUTRAL)
    assert loaded.select(split="train", paired=True)  # directions need pairs
    splits_of: dict[str, set[str]] = {}
    for s in loaded.samples:
        splits_of.setdefault(_normal(s.prompt), set()).add(s.split)
    shared = {p: sp for p, sp in splits_of.items() if len(sp) > 1}
    assert not shared, list(shared.items())[:3]
    pipeline.check_disjoint(loaded)


def test_samples_output_reports_summary_and_hash(built):
    result, out = built
    loaded = SampleSet.load(out)
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"wrote {out} ({len(loaded.samples)} samples, hash {loaded.content_hash})"
    reported = {line.rsplit(maxsplit=1)[0].strip(): int(line.rsplit(maxsplit=1)[1]) for line in lines[:-1]}
    assert reported == loaded.summary()


def test_samples_seed_is_deterministic_and_changes_splits(built, tmp_path):
    _, default_out = built
    same, other = tmp_path / "same.jsonl", tmp_path / "other.jsonl"
    assert _invoke(cli.main, ["samples", "refusal", "--out", same, "--seed", "0"]).exit_code == 0
    assert _invoke(cli.main, ["samples", "refusal", "--out", other, "--seed", "1"]).exit_code == 0
    assert same.read_text() == default_out.read_text()
    reseeded = SampleSet.load(other)
    assert reseeded.content_hash != SampleSet.load(default_out).content_hash
    assert reseeded.meta["seed"] == 1
    pipeline.check_disjoint(reseeded)


def test_samples_unknown_recipe_writes_nothing(tmp_path):
    out = tmp_path / "x.jsonl"
    line = _one_line_error(_invoke(cli.main, ["samples", "no-such-recipe", "--out", out]))
    assert "'no-such-recipe'" in line and "refusal" in line
    assert os.listdir(tmp_path) == []


def test_samples_out_that_is_a_folder_is_a_usage_error(tmp_path):
    output = _assert_clean_error(_invoke(cli.main, ["samples", "refusal", "--out", tmp_path]), 2)
    assert "'--out'" in output


# ------------------------------------------------- once-known gaps, now fixed


def test_negative_layer_fails_before_loading_a_model(tmp_path):
    result = _invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--layers", "8,-1"])
    assert not isinstance(result.exception, ModelLoadAttempted), "the error fired only after loading a model"
    assert isinstance(result.exception, SystemExit) and result.exit_code in (1, 2), result.output
    assert "-1" in result.output and "Traceback" not in result.output


def test_infinite_strength_fails_before_loading_a_model(tmp_path):
    line = _one_line_error(_invoke(cli.compile_command, ["refusal", "--out", tmp_path / "a", "--strength", "inf"]))
    assert "strength" in line


def test_binary_recipe_file_is_one_line(tmp_path):
    recipe = tmp_path / "binary.toml"
    recipe.write_bytes(b"\xff\xfe\x00")
    line = _one_line_error(_invoke(cli.compile_command, [recipe, "--out", tmp_path / "a"]))
    assert str(recipe) in line


def test_samples_out_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line_error(_invoke(cli.main, ["samples", "refusal", "--out", blocker / "x.jsonl"]))
    assert str(blocker) in line


def test_recipes_with_a_broken_builtin_is_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 1\n")
    monkeypatch.setattr("masteer.compiler.samples.recipes.builtin_recipes", lambda: {"broken": broken})
    line = _one_line_error(_invoke(cli.main, ["recipes"]))
    assert str(broken) in line


def test_built_sample_ids_are_unique(built):
    _, out = built
    ids = [s.id for s in SampleSet.load(out).samples]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, repeated[:5]


def test_built_file_is_json_lines(built):
    _, out = built
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["masteer_samples"] == 1
    assert len(lines) == 1 + len(SampleSet.load(out).samples)
