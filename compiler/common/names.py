"""Names the command line needs before anything heavy is imported (the CLI must start in a blink, so a
Ctrl-C during start-up lands in its error handler, not in torch's import)."""

EMBEDDED_NAME = "smollm2-135m-instruct"
