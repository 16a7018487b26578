"""Thin kopf handlers: read, call the pure core, write the difference. Importing registers them."""

from virtfleet.handlers import startup, vmtemplate

__all__ = ["startup", "vmtemplate"]
