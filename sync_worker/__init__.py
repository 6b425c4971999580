"""crm-sync: provisions CareerCast accounts for paying CRM customers and owns their schema."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
