"""fedpress: communication-efficient federated learning with exact byte accounting."""

from fedpress.layout import Layout

__all__ = ["Layout"]
__version__ = "0.1.0"
