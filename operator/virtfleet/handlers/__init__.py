"""Thin kopf handlers: read, call the pure core, write the difference. Importing registers them."""

from virtfleet.handlers import indexes, plan, pool, startup, vmtemplate

__all__ = ["indexes", "plan", "pool", "startup", "vmtemplate"]
