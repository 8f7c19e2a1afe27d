"""The Hub model card of anything masteer ships: an adapter, a LoRA lowering, a baked checkpoint, GGUF files.

The front matter is written by ``huggingface_hub.ModelCardData`` (so ``ModelCard`` parses it back): base_model,
library_name, tags and, when a compile report is at hand, a ``model-index`` with the held-out test results of
the artifact's arm next to the base model's. The body says the program in words and how to load the folder
with the engines that load it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from masteer.runtime.artifact import CONFIG_NAME, FORMAT_NAME
from masteer.runtime.errors import MasteerError
from masteer.runtime.kinds import ABLATION, ADDITIVE, NEURON, ROTATION

ADAPTER, LORA, BAKED, GGUF = "masteer adapter", "PEFT LoRA", "baked checkpoint", "GGUF"
LIBRARY = {ADAPTER: "masteer", LORA: "peft", BAKED: "transformers", GGUF: "gguf"}
ARTICLE = {ADAPTER: "A masteer adapter", LORA: "A PEFT LoRA", BAKED: "A baked checkpoint", GGUF: "GGUF files"}
REPORT_GLOB = "compile_report*.json"
PROGRAM_NAME = "masteer_program.json"  # the masteer program a lowering came from, beside it (as in a bake)
SHIPPED_ARM = "adaptive"   # the compile report's arm that is the compiled program


@dataclass
class Shipment:
    """What a folder holds: its kind, the masteer program (config dict) it came from, its base model, files."""
    folder: Path
    kind: str
    program: dict
    base_model: str
    gguf_files: tuple[str, ...] = ()


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MasteerError(f"{path} cannot be read as JSON: {exc}") from None


def identify(folder: str | Path) -> Shipment:
    """Which of masteer's destinations ``folder`` holds; MasteerError (one line) when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MasteerError(f"{folder} is not a folder: give the folder of an adapter, a LoRA lowering, a baked "
                           f"checkpoint or GGUF files")
    program = _json(folder / PROGRAM_NAME) if (folder / PROGRAM_NAME).is_file() else {}
    ggufs = tuple(sorted(p.name for p in folder.glob("*.gguf")))
    if (folder / CONFIG_NAME).is_file():
        config = _json(folder / CONFIG_NAME)
        if config.get("format") == FORMAT_NAME:
            return Shipment(folder, ADAPTER, config, config.get("base_model_name_or_path", ""))
        if config.get("peft_type") == "LORA":
            return Shipment(folder, LORA, program, config.get("base_model_name_or_path") or "")
    if (folder / "config.json").is_file():
        config = _json(folder / "config.json")
        return Shipment(folder, BAKED, program, program.get("base_model_name_or_path") or
                        config.get("_name_or_path", ""))
    if ggufs:
        return Shipment(folder, GGUF, program, program.get("base_model_name_or_path", ""), ggufs)
    raise MasteerError(f"{folder} holds no masteer adapter, PEFT LoRA, checkpoint (config.json) or .gguf file")


# ----------------------------------------------------------------------------- the program in words
def _specs(program: dict) -> list[tuple[int | None, dict]]:
    placed = [(int(layer), s) for layer, specs in program.get("layers", {}).items() for s in specs]
    return sorted(placed, key=lambda p: p[0]) + [(None, s) for s in program.get("global", [])]


def program_in_words(program: dict) -> list[str]:
    """One line per strategy (a gate's neurons count as one strategy)."""
    lines, seen = [], set()
    for layer, spec in _specs(program):
        kind, strength = spec.get("kind"), float(spec.get("strength", 0.0))
        algorithm = spec.get("algorithm") or "fitted"
        issue = f" (issue `{spec['issue']}`)" if spec.get("issue") else ""
        if kind == NEURON:
            name = spec.get("group") or spec["name"].split(":")[0]
            if name in seen:
                continue
            seen.add(name)
            count = sum(1 for _, s in _specs(program)
                        if s.get("kind") == NEURON and (s.get("group") or s["name"].split(":")[0]) == name)
            lines.append(f"layer {layer}: `{name}` adds a {algorithm} direction (strength {strength:g}) only where "
                         f"its anchor opens, token by token ({count} gate neuron{'s' if count > 1 else ''}){issue}")
        elif kind == ADDITIVE:
            lines.append(f"layer {layer}: `{spec['name']}` adds a {algorithm} direction (strength {strength:g}) to "
                         f"the MLP output on every token{issue}")
        elif kind == ROTATION:
            lines.append(f"layer {layer}: `{spec['name']}` turns every token's hidden state toward a {algorithm} "
                         f"direction by {math.degrees(strength):.3g} degrees, its norm kept{issue}")
        elif kind == ABLATION:
            lines.append(f"every layer: `{spec['name']}` removes {algorithm} direction(s) from every write into the "
                         f"residual stream (directional ablation, {strength:g} of the component){issue}")
    if program.get("selection") == "exclusive":
        lines.append("per token and layer, only the strategy with the highest anchor score fires")
    return lines


# ----------------------------------------------------------------------------- results
def find_report(folder: Path, report: str | Path | None = None) -> dict | None:
    """The compile report given, else the one inside ``folder`` (an adaptive compile's adapter holds it)."""
    if report is not None:
        return _json(Path(report))
    found = sorted(folder.glob(REPORT_GLOB))
    return _json(found[0]) if found else None


def eval_results(report: dict | None):
    """``EvalResult``s for the model-index: per held-out group, the shipped arm's and the base model's rate (%)."""
    from huggingface_hub import EvalResult
    evaluation = (report or {}).get("evaluation") or {}
    table = evaluation.get("refusal", evaluation)
    groups = table.get("groups") or []
    if not groups or SHIPPED_ARM not in table.get("arms", []):
        return []
    recipe = report.get("recipe", "issue")
    samples = (report.get("samples") or {}).get("hash", "")
    dataset = f"{recipe} held-out test split" + (f" (sample set {samples})" if samples else "")
    out = []
    for group in groups:
        for arm, suffix in ((SHIPPED_ARM, ""), ("base", ", base model")):
            rate = group.get("rates", {}).get(arm)
            if rate is None:
                continue
            out.append(EvalResult(task_type="text-generation", dataset_type=f"masteer/{recipe}", dataset_name=dataset,
                                  dataset_split="test", metric_type="refusal_rate", metric_value=round(100 * rate, 1),
                                  metric_name=f"refusal on {group['group']} (n={group.get('n')}, should go "
                                              f"{group.get('direction', '?')}){suffix}, %"))
    return out


# ----------------------------------------------------------------------------- loading snippets
def loading_snippets(shipment: Shipment, repo_id: str) -> str:
    base = shipment.base_model or "BASE_MODEL"
    if shipment.kind == ADAPTER:
        return ("```python\nfrom huggingface_hub import snapshot_download\nfrom transformers import "
                "AutoModelForCausalLM\nfrom masteer.runtime import SteeredModel   # pip install masteer\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({base!r})\n"
                f"steered = SteeredModel.from_pretrained(model, snapshot_download({repo_id!r}))\n```\n\n"
                "Plain transformers, PEFT and vLLM do not run a masteer adapter; bake it into a checkpoint they load "
                "with `masteer bake ADAPTER --model BASE --out DIR`.\n")
    if shipment.kind == LORA:
        return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
                f"model = PeftModel.from_pretrained(base, {repo_id!r})   # or: base.load_adapter({repo_id!r})\n"
                "merged = model.merge_and_unload()   # the same weights `masteer bake` writes\n```\n")
    if shipment.kind == BAKED:
        return ("```python\nfrom transformers import AutoModelForCausalLM\n\n"
                f"model = AutoModelForCausalLM.from_pretrained({repo_id!r})   # no masteer code needed\n```\n\n"
                f"```bash\nvllm serve {repo_id}\n```\n")
    lines = ["```bash", f"huggingface-cli download {repo_id} --local-dir {repo_id.split('/')[-1]}"]
    for name in shipment.gguf_files:
        if "control" in name:
            lines.append(f"llama-cli -m BASE_MODEL.gguf --control-vector {name} -p \"...\"   # control vector")
        else:
            lines.append(f"llama-cli -m {name} -p \"...\"")
    return "\n".join(lines + ["```", ""])


# ----------------------------------------------------------------------------- the card
def shipment_card(folder: str | Path, repo_id: str, report: str | Path | None = None) -> str:
    """The README.md of ``folder`` pushed as ``repo_id``, its front matter parseable by ``huggingface_hub``."""
    from huggingface_hub import ModelCardData
    shipment = identify(folder)
    program = program_in_words(shipment.program)
    issues = sorted({s.get("issue") for _, s in _specs(shipment.program) if s.get("issue")})
    tags = ["masteer", "steering", "representation-engineering", *issues]
    tags += {LORA: ["lora"], BAKED: ["baked"], GGUF: ["gguf", "llama.cpp"]}.get(shipment.kind, [])
    results = eval_results(find_report(shipment.folder, report))
    data = ModelCardData(base_model=shipment.base_model or None, library_name=LIBRARY[shipment.kind], tags=tags,
                         model_name=repo_id if results else None, eval_results=results or None)
    words = "\n".join(f"- {line}" for line in program) if program else "- (no masteer program recorded in this folder)"
    table = ""
    if results:
        table = "## Measured (held-out test split)\n\n| metric | value |\n|---|---|\n" + "".join(
            f"| {r.metric_name} | {r.metric_value} |\n" for r in results) + "\n"
    return (f"---\n{data.to_yaml()}\n---\n\n# {repo_id.split('/')[-1]}\n\n"
            f"{ARTICLE[shipment.kind]} holding a masteer steering program for "
            f"`{shipment.base_model or 'its base model'}`.\n\n"
            f"## The program\n\n{words}\n\n{table}## Use\n\n{loading_snippets(shipment, repo_id)}")
