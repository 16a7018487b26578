"""VMTemplate handlers."""

from __future__ import annotations

from typing import Any

import kopf

from virtfleet.api import reasons
from virtfleet.kube.client import VM_TEMPLATES, ApiError, namespace_terminating
from virtfleet.kube.runtime import Runtime
from virtfleet.kube.templates import collect_unused_revisions, reconcile_template


@kopf.on.resume(*VM_TEMPLATES.gvr)
@kopf.on.create(*VM_TEMPLATES.gvr)
@kopf.on.update(*VM_TEMPLATES.gvr)
async def reconcile_vmtemplate(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Validate; store the spec as an immutable revision; report both in status; drop unused revisions."""
    runtime: Runtime = memo["runtime"]
    namespace = namespace or ""
    revisions, pools_by_template = kwargs["revisions"], kwargs["pools_by_template"]
    # Unused revisions are collected below: every pool's VMs must be known first.
    pool_members = await runtime.vm_index("pool_members")
    try:
        verdict = await reconcile_template(
            runtime,
            namespace,
            name,
            str(meta.get("uid", "")),
            meta.get("generation"),
            dict(spec),
            dict(status),
            revisions.get((namespace, name), ()),
        )
    except ApiError as error:
        if namespace_terminating(error):
            return  # the namespace's deletion takes the template with it
        raise
    if verdict.status_patch:
        patch.status.update(verdict.status_patch)
        if not verdict.valid and "conditions" in verdict.status_patch:
            kopf.warn(body, reason=reasons.INVALID_SPEC, message=verdict.message)
    current = verdict.status_patch.get("currentRevision", status.get("currentRevision"))
    if current:  # derived from this very spec when it is valid, so the spec itself need not be kept too
        await collect_unused_revisions(
            runtime, namespace, name, revisions, pools_by_template, pool_members, current
        )
