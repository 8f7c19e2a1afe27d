"""Error types shared by the runtime and the compiler.

Every error raised on bad input is one of these, so a caller can catch masteer's own
complaints without swallowing unrelated bugs, and the CLI can print them without a traceback.
"""


class MasteerError(ValueError):
    """Bad input to masteer: the message names what is wrong and where."""


class AdapterFormatError(MasteerError):
    """An adapter folder is missing, truncated, inconsistent, or from an unknown format version."""


class FingerprintMismatch(MasteerError):
    """An adapter is attached to a model other than the one it was compiled for."""


class HostNotSupported(MasteerError):
    """The model's MLP layout is not one masteer knows how to extend."""


class LoweringError(MasteerError):
    """A strategy cannot be expressed exactly in the requested lowering target."""
