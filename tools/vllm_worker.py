"""vLLM's side of tools/vllm_check.py, run by the vLLM venv's python (``bash tools/vllm_setup.sh``), not by .venv.

    .venv-vllm/bin/python tools/vllm_worker.py JOB.json RESULT.json

It imports vLLM and the standard library only (no masteer, no transformers of its own choosing): the job names a
checkpoint folder, a dtype, the prompts as token ids, the stop token ids, the number of new tokens and the number of
timing rounds. It answers every prompt greedily (temperature 0) in one batch, then, ``rounds`` times, generates the
whole batch again with end-of-sequence ignored (every prompt gets exactly ``max_new_tokens`` tokens, so base and
baked generate the same amount) and times it. The result holds the tokens (up to, not including, a stop token), the
seconds and tokens per round, and the versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(job.get("kv_cache_gb", 2)))
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    prompts = [{"prompt_token_ids": [int(t) for t in ids]} for ids in job["prompts"]]
    longest = max(len(p["prompt_token_ids"]) for p in prompts)
    start = time.perf_counter()
    llm = LLM(model=job["model"], dtype=job["dtype"], seed=0, skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=longest + job["max_new_tokens"] + 8, max_num_seqs=max(len(prompts), 1))
    load_seconds = time.perf_counter() - start
    stops = [int(t) for t in job["stop_token_ids"]]
    greedy = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], stop_token_ids=stops,
                            detokenize=False)
    outputs = llm.generate(prompts, greedy, use_tqdm=False)
    tokens = []
    for out in outputs:
        ids = list(out.outputs[0].token_ids)
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        tokens.append([int(t) for t in ids[:cut]])
    fixed = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], ignore_eos=True, detokenize=False)
    rounds = []
    for _ in range(job.get("rounds", 0)):
        start = time.perf_counter()
        timed = llm.generate(prompts, fixed, use_tqdm=False)
        seconds = time.perf_counter() - start
        generated = sum(len(o.outputs[0].token_ids) for o in timed)
        rounds.append({"seconds": round(seconds, 4), "tokens": generated,
                       "tokens_per_second": round(generated / seconds, 2)})
    result = {"tokens": tokens, "rounds": rounds, "load_seconds": round(load_seconds, 2),
              "versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                           "transformers": importlib.metadata.version("transformers")}}
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
