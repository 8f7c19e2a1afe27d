"""Names the command line needs before anything heavy is imported (the CLI must start in a blink, so a
Ctrl-C during start-up lands in its error handler, not in torch's import)."""

EMBEDDED_NAME = "smollm2-135m-instruct"

# what the compile's selection stages run in (``common.selection_model``)
SELECTION_AUTO, SELECTION_EXACT, SELECTION_BF16 = "auto", "exact", "bf16"
SELECTION_BF16_SEARCH = "bf16-search"   # the library calibrated on the model as loaded, the program search in bf16
SELECTION_PRECISIONS = (SELECTION_AUTO, SELECTION_EXACT, SELECTION_BF16, SELECTION_BF16_SEARCH)
