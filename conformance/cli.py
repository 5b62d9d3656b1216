"""`homecare-conformance`: the vendor conformance suite's command line."""

from __future__ import annotations

import sys


def main() -> None:
    sys.stderr.write(
        "homecare-conformance: the conformance suite has no test cases yet; it arrives with its own issue.\n"
    )
    raise SystemExit(2)
