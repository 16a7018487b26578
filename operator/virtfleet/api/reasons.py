"""Condition reasons and event reasons: constants, part of the API users and alerts match on."""

from __future__ import annotations

# VMTemplate
TEMPLATE_VALID = "TemplateValid"
INVALID_SPEC = "InvalidSpec"
