"""The runtime's version, written into every adapter it saves."""

__version__ = "0.1.0"
