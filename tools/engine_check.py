"""What the engine checks share (tools/vllm_check.py, tools/llama_cpp_check.py): the adapter's held-out prompts,
the model's stop tokens, base and baked checkpoints in a temporary folder, transformers' greedy answers as the
reference, and token agreement between two engines' answers.

Not a package: each check puts this folder on ``sys.path`` and imports it by name.
"""

from __future__ import annotations

from pathlib import Path

GROUPS = ("harmful", "benign")


class CheckError(Exception):
    """A one-line reason a check cannot run; its main prints it as ``Error: ...`` and returns 2."""


def held_out_prompts(adapter: Path, n: int) -> dict[str, list[str]]:
    """The first ``n`` harmful (target) and benign (neutral) test prompts of the adapter's sample set."""
    from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, SampleSet
    samples = SampleSet.load(Path(adapter) / "samples.jsonl")
    texts = {"harmful": [s.prompt for s in samples.select(split="test", label=TARGET)][:n],
             "benign": [s.prompt for s in samples.select(split="test", label=NEUTRAL)][:n]}
    for group, prompts in texts.items():
        if not prompts:
            raise CheckError(f"{Path(adapter) / 'samples.jsonl'} has no {group} test prompts")
    return texts


def stop_ids(loaded) -> list[int]:
    """The tokenizer's end-of-sequence id and the generation config's, sorted."""
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    return sorted({e for e in [loaded.tokenizer.eos_token_id, *configured] if e is not None})


def base_and_baked(loaded, model: str, adapter: Path, folder: Path) -> tuple[Path, Path]:
    """The base model and the adapter baked into a fresh copy of it, saved as checkpoints under ``folder``."""
    from masteer.compiler.common.models import load_model
    from masteer.runtime import SteeringAdapter, bake
    base_dir = Path(folder) / "base"
    loaded.model.save_pretrained(base_dir)
    loaded.tokenizer.save_pretrained(base_dir)
    baked_dir = bake(load_model(model).model, SteeringAdapter.load(adapter), Path(folder) / "baked",
                     tokenizer=loaded.tokenizer)
    return base_dir, baked_dir


def trim(tokens: list[int], stops) -> list[int]:
    """The answer up to, not including, its first stop token (transformers keeps the end-of-sequence token and
    pads after it; vLLM's worker and llama.cpp's loop cut there): every engine's answers in one form."""
    stops = set(stops)
    return [int(t) for t in next((tokens[:i] for i, t in enumerate(tokens) if t in stops), tokens)]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How many answers are token for token identical, and the mean length of the common prefix."""
    if len(reference) != len(other):
        raise ValueError(f"agreement needs as many answers on each side, got {len(reference)} and {len(other)}")
    if not reference:
        raise ValueError("agreement needs at least one answer")
    same = sum(a == b for a, b in zip(reference, other))
    prefix = [common_prefix(a, b) for a, b in zip(reference, other)]
    return {"identical": same, "n": len(reference), "mean_common_prefix": round(sum(prefix) / len(prefix), 2)}


def transformers_answers(model, prompts: list[list[int]], max_new_tokens: int, stops) -> list[list[int]]:
    """Greedy answers, one prompt at a time (no padding), cut at the first stop token."""
    import torch
    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(stops),
                                 pad_token_id=list(stops)[0])
            out.append(trim(gen[0, len(ids):].tolist(), stops))
    return out
