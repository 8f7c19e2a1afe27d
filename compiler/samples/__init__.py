"""Stage 1, samples: a recipe (or an issue in words, through the AutoTester) becomes a ``SampleSet`` of
target and neutral prompts with desired and undesired completions, split by source item into
train / val / test (``sample_set``; saved as ``samples.jsonl``). Builders read installed datasets, rewrite
families vary the surface of every prompt, and LLM backends write new samples when one is configured."""
