"""The compile benchmark runs the real ``masteer-compile`` and reports its failure instead of numbers. (A whole
compile is too slow for the suite; its numbers live in docs/benchmarks/compile.md.)"""

from __future__ import annotations

from tool_scripts import load_tool


def test_a_failing_compile_is_reported_with_its_exit_code_and_nothing_is_written(tmp_path, capsys):
    module = load_tool("bench_compile")
    out = tmp_path / "numbers.json"
    code = module.main(["--recipe", str(tmp_path / "missing.toml"), "--json", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "masteer-compile failed" in err and "missing.toml" in err
    assert not out.exists()
