"""The homecare e-prescribing gateway: FHIR intake, routing to providers, status back to trusts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("homecare-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
