"""Thin kopf handlers: read, call the pure core, write the difference. Importing registers them."""

from virtfleet.handlers import indexes, pool, startup, vmtemplate

__all__ = ["indexes", "pool", "startup", "vmtemplate"]
