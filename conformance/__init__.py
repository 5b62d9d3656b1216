"""The vendor-facing conformance suite: talks HTTP (and MLLP) only, so it can test any implementation."""

__version__ = "1.0.0"
