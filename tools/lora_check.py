"""The PEFT LoRA lowering on the real model: PEFT's logits and greedy tokens against the masteer runtime's, and
PEFT's ``merge_and_unload()`` against ``masteer bake``.

    .venv/bin/python tools/lora_check.py --adapter out/refusal [--n 16] [--json docs/benchmarks/lora.json]

A compiled program is gated (no LoRA form), so this takes the adapter's first strategy direction and builds the two
programs a LoRA carries from it: an always-on vector (strength ``--strength``) at the strategy's layer, and a
directional ablation of that direction. For each: export with ``save_lora``, load with
``PeftModel.from_pretrained`` on a fresh base, and compare on ``--n`` harmful and ``--n`` benign test prompts of the
adapter (chat-formatted, left-padded batch): max |logit difference| over every real token, greedy tokens
(``--max-new-tokens``), and the time of that generation. PEFT refuses to merge a ``lora_bias`` into a layer without
a bias (Llama's MLP), so the always-on program's merge is reported as refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from masteer.runtime.atomic import atomic_write_text


def batch(tokenizer, prompts):
    from masteer.compiler.capture.activations import encode_prompt
    from masteer.compiler.common.batching import left_pad
    ids, mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def measure(model, inputs, max_new_tokens):
    logits = model(**inputs).logits.float()
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return logits, out[:, inputs["input_ids"].shape[1]:], time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, type=Path)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--strength", type=float, default=2.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    from peft import PeftModel

    from masteer.compiler.common.models import load_model
    from masteer.compiler.lowering.lora import save_lora
    from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, SampleSet
    from masteer.runtime import SteeringAdapter, attach, merge_into_model

    torch.set_num_threads(2)
    compiled = SteeringAdapter.load(args.adapter)
    first = next(s for s in compiled.strategies if s.layer is not None)
    block = compiled.block(first.layer, first.kind)
    direction = block["direction"][0] / block["direction"][0].norm()
    samples = SampleSet.load(args.adapter / "samples.jsonl")
    prompts = ([s.prompt for s in samples.select(split="test", label=TARGET)][: args.n]
               + [s.prompt for s in samples.select(split="test", label=NEUTRAL)][: args.n])
    loaded = load_model(args.model)
    inputs = batch(loaded.tokenizer, prompts)
    real = inputs["attention_mask"].bool()
    results = {"adapter": str(args.adapter), "direction_from": first.name, "layer": first.layer,
               "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": []}
    base_logits, base_tokens, base_s = measure(loaded.model, inputs, args.max_new_tokens)
    for program in ("always-on", "ablation"):
        adapter = SteeringAdapter(compiled.base_model_name_or_path, compiled.fingerprint, compiled.host_form,
                                  compiled.activation)
        if program == "always-on":
            adapter.add_additive(first.layer, "static", direction=direction, strength=args.strength)
        else:
            adapter.add_ablation("ablation", direction=direction)
        steered = attach(loaded.model, adapter)
        try:
            want_logits, want_tokens, runtime_s = measure(loaded.model, inputs, args.max_new_tokens)
        finally:
            steered.detach()
        with tempfile.TemporaryDirectory() as tmp:
            path = save_lora(loaded.model, adapter, Path(tmp) / "lora")
            size = sum(p.stat().st_size for p in path.iterdir())
            peft_model = PeftModel.from_pretrained(load_model(args.model).model, path).eval()
            got_logits, got_tokens, peft_s = measure(peft_model, inputs, args.max_new_tokens)
            row = {"program": program, "lora_bytes": size,
                   "effect_max_abs_logit": round(float((want_logits - base_logits)[real].abs().max()), 4),
                   "peft_vs_runtime_max_abs_logit": float((got_logits - want_logits)[real].abs().max()),
                   "greedy_identical": int((got_tokens == want_tokens).all(-1).sum()),
                   "runtime_s": round(runtime_s, 2), "peft_s": round(peft_s, 2), "base_s": round(base_s, 2)}
            try:
                merged = peft_model.merge_and_unload()
                baked = merge_into_model(load_model(args.model).model, adapter)
                merged_logits, _, merged_s = measure(merged, inputs, args.max_new_tokens)
                baked_logits, _, _ = measure(baked, inputs, args.max_new_tokens)
                row["merge_vs_bake_max_abs_logit"] = float((merged_logits - baked_logits)[real].abs().max())
                row["merged_s"] = round(merged_s, 2)
            except RuntimeError as exc:
                row["merge"] = f"refused by PEFT: {str(exc).splitlines()[0]}"
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
