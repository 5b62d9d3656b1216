"""Write the example requests in examples/ from the message builder (synthetic data only).

python scripts/make_examples.py
"""

from __future__ import annotations

import json
from pathlib import Path

from fhir_profiles.builder import PrescriptionMessageBuilder, break_message

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    builder = PrescriptionMessageBuilder(seed=2026)
    order = builder.build(items=2)
    files = {
        "prescription-order.json": order,
        "prescription-order-4-items.json": builder.build(items=4, performer_ods="VNFKT"),
        "refused-bad-nhs-number.json": break_message(builder.build(items=1), "bad-nhs-check-digit"),
        "refused-not-homecare.json": break_message(builder.build(items=1), "community-prescription-type"),
        "refused-several-problems.json": break_message(
            break_message(builder.build(items=2), "status-bogus"), "no-dosage-instruction"
        ),
    }
    EXAMPLES.mkdir(exist_ok=True)
    for name, message in files.items():
        (EXAMPLES / name).write_text(json.dumps(message, indent=2) + "\n", encoding="utf-8")
        print(f"wrote examples/{name}")


if __name__ == "__main__":
    main()
