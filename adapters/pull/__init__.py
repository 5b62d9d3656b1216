"""The `pull` adapter (the provider fetches its queued orders from the gateway) and its polling provider simulator."""

from adapters.pull.adapter import PullAdapter
from adapters.pull.settings import PullSettings

__all__ = ["PullAdapter", "PullSettings"]
