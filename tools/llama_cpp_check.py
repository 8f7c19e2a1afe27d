"""Run a baked masteer checkpoint in llama.cpp itself and compare it with transformers.

    bash tools/llama_cpp_setup.sh                     # builds llama-cpp-python into .venv (minutes)
    .venv/bin/python tools/llama_cpp_check.py --adapter out/refusal [--n 16] [--json docs/benchmarks/llama-cpp.json]

Steps: bake the adapter into its base model (the embedded SmolLM2 unless --model), write the base and the baked
checkpoint as GGUF (f32, f16, q8_0) with ``masteer export gguf``'s writer, then answer the adapter's held-out
test prompts (``--n`` harmful and ``--n`` benign, from its samples.jsonl, chat-formatted, the same token ids fed to
both engines) greedily for ``--max-new-tokens`` tokens: transformers float32 and llama.cpp at each type. Prints
and stores the token agreement with transformers (f32 should be identical) and the refusal rates (phrase judge)
of base and baked, which is what a gated program kept or lost in llama.cpp. Runs on CPU, a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from masteer.runtime.atomic import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))   # engine_check, beside this script
from engine_check import (CheckError, agreement, base_and_baked, held_out_prompts, stop_ids,  # noqa: E402
                          transformers_answers)


def without_extra_buffer_types() -> None:
    """Load models without llama.cpp's extra CPU buffer types (AMX / weight repacking). On the project's machine
    (a CPU with AMX, in a sandbox) llama.cpp segfaults in them on the first Q8_0 matmul, f32 and f16 do not;
    with them off, Q8_0 runs on the plain CPU kernels. The arithmetic compared here is the same either way."""
    import llama_cpp
    import llama_cpp.llama as module
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    module.llama_cpp.llama_model_default_params = params


def llama_cpp_answers(path: Path, prompts: list[list[int]], max_new_tokens: int, eos: set[int]) -> list[list[int]]:
    from llama_cpp import Llama
    without_extra_buffer_types()
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False, seed=0)
    out = []
    for ids in prompts:
        llm.reset()
        tokens = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token in eos:
                break
            tokens.append(int(token))
            if len(tokens) >= max_new_tokens:
                break
        out.append(tokens)
    return out


def report(results, prompts, tokenizer, reference, arm, engine, kind, answers, seconds, is_refusal) -> None:
    row = {"arm": arm, "engine": engine, "type": kind, "seconds": round(seconds, 1)}
    for g in prompts:
        texts = [tokenizer.decode(a, skip_special_tokens=True) for a in answers[g]]
        row[f"{g}_refusal"] = round(sum(map(is_refusal, texts)) / len(texts), 3)
        row[f"{g}_agreement"] = agreement(reference[g], answers[g])
    results["rows"].append(row)
    print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, type=Path, help="a compiled adapter folder with samples.jsonl")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=16, help="harmful and benign test prompts each")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--types", default="f32,f16,q8_0")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    from masteer.compiler.capture.activations import encode_prompt
    from masteer.compiler.common.judge import is_refusal
    from masteer.compiler.common.models import load_model
    from masteer.compiler.lowering.gguf_model import write_gguf_model

    torch.set_num_threads(2)
    try:
        groups = held_out_prompts(args.adapter, args.n)
    except CheckError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    loaded = load_model(args.model)
    tokenizer = loaded.tokenizer
    prompts = {g: [encode_prompt(tokenizer, p) for p in ps] for g, ps in groups.items()}
    eos = set(stop_ids(loaded))
    results: dict = {"adapter": str(args.adapter), "model": args.model, "max_new_tokens": args.max_new_tokens,
                     "n_per_group": {g: len(p) for g, p in prompts.items()}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="masteer-llama-cpp-") as tmp:
        tmp = Path(tmp)
        base_dir, baked_dir = base_and_baked(loaded, args.model, args.adapter, tmp)
        from transformers import AutoModelForCausalLM
        for arm, folder in (("base", base_dir), ("baked", baked_dir)):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            start = time.perf_counter()
            reference = {g: transformers_answers(model, p, args.max_new_tokens, eos) for g, p in prompts.items()}
            seconds = time.perf_counter() - start
            report(results, prompts, tokenizer, reference, arm, "transformers", "f32", reference, seconds, is_refusal)
            for kind in args.types.split(","):
                path = write_gguf_model(folder, tmp / f"{arm}-{kind}.gguf", kind)
                start = time.perf_counter()
                answers = {g: llama_cpp_answers(path, p, args.max_new_tokens, eos) for g, p in prompts.items()}
                report(results, prompts, tokenizer, reference, arm, "llama.cpp", kind, answers,
                       time.perf_counter() - start, is_refusal)
                if args.json:   # after every engine: a long run stopped early keeps what it measured
                    atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
