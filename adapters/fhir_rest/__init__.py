"""The `fhir-rest` adapter (orders pushed to the provider's FHIR `$process-message`) and its simulator."""

from adapters.fhir_rest.adapter import FhirRestAdapter
from adapters.fhir_rest.settings import FhirRestSettings

__all__ = ["FhirRestAdapter", "FhirRestSettings"]
