"""MigrationPlan handlers: plan and estimate (dry run); execution comes later."""

from __future__ import annotations

from typing import Any

import kopf

from virtfleet import GROUP, VERSION
from virtfleet.api.migrationplan import MigrationPlanSpec
from virtfleet.kube.plans import build_plan, plan_status

PLURAL = "migrationplans"


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def plan_migrationplan(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    patch: kopf.Patch,
    **kwargs: Any,
) -> None:
    """Select the VMs, plan targets, order and limits, estimate every move, and report it in status."""
    parsed = MigrationPlanSpec.model_validate(dict(spec))
    plan = build_plan(
        parsed,
        namespace or "",
        list(kwargs["placements"].get(None, ())),
        list(kwargs["nodes"].get(None, ())),
        {
            pool: ratios
            for (ns, pool), values in kwargs["pool_ratios"].items()
            if ns == namespace
            for ratios in values
        },
    )
    changes = plan_status(parsed, plan, dict(status), meta.get("generation"))
    if changes:
        patch.status.update(changes)
