"""The `hl7v2-mllp` adapter: RDE^O11 orders over MLLP, ORR^O02 / RDS^O13 status back; listener, simulator."""

from adapters.hl7v2_mllp.adapter import Hl7v2MllpAdapter
from adapters.hl7v2_mllp.settings import Hl7v2MllpSettings, MllpListenerSettings

__all__ = ["Hl7v2MllpAdapter", "Hl7v2MllpSettings", "MllpListenerSettings"]
