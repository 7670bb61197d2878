"""policyd: a scriptable policy engine for frp's server plugin API."""

from __future__ import annotations

__version__ = "0.1.0"
