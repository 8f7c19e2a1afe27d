"""The compiler: an issue becomes a steering adapter, in stages whose data flows one way.

1. ``samples``     recipe or issue text -> ``SampleSet`` (targets, neutrals, completions; train/val/test)
2. ``capture``     fitting sequences -> ``Activations`` (one model pass, stored by content hash)
3. ``strategies``  activations -> ``Proposal`` per algorithm and layer, calibrated (``StrategyRow``)
4. ``program``     proposals -> anchors, applicability, program search -> ``Program`` (lowered to neurons)
5. ``lowering``    an adapter -> what other engines load: PEFT LoRA, GGUF (model, control vector), Hub card and push
6. ``evaluation``  base / static / adaptive arms on held-out test prompts -> tables, suites, reports

``common`` (datasets, judge, model loading) serves every stage and imports none. A stage imports only
earlier stages and ``common`` (``tests/compiler/test_import_order.py`` checks it). The drivers on top run
the stages: ``compile`` (the one compile: ``compile_program`` with a preset that builds the program, the
adaptive program search by default or the single-strategy preset, then ``evaluate_program`` and
``save_program``; ``--add-to``), ``pipeline`` (the steps every preset shares, and the strategy survey),
``lofo`` (leave one family out), ``measure_autotester`` (``masteer measure``), ``serve`` and ``cli``.
The baked checkpoint itself is ``masteer.runtime``'s (a consumer bakes without the compiler); ``lowering`` holds
the destinations that need more than the runtime's dependencies (peft, gguf, huggingface_hub).
"""
