"""VMTemplate handlers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from virtfleet import GROUP, VERSION
from virtfleet.api import reasons
from virtfleet.core.templates import evaluate_template

PLURAL = "vmtemplates"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def validate_vmtemplate(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    """Validate the template and report the verdict in status.conditions (Ready, Stalled)."""
    verdict = evaluate_template(dict(spec), dict(status), meta.get("generation"), datetime.now(UTC))
    if not verdict.status_patch:
        return
    patch.status.update(verdict.status_patch)
    if not verdict.valid and "conditions" in verdict.status_patch:
        kopf.warn(body, reason=reasons.INVALID_SPEC, message=verdict.message)
