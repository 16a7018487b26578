"""VMTemplate revisions kept as ControllerRevisions (apps/v1), owned by their template."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from virtfleet import API_VERSION
from virtfleet.api.labels import REVISION_LABEL, TEMPLATE_LABEL
from virtfleet.core.revisions import RevisionFacts, revision_name
from virtfleet.kube.client import CONTROLLER_REVISIONS, Conflict, Kube, NotFound


async def ensure_revision(
    kube: Kube,
    namespace: str,
    template: str,
    template_uid: str,
    digest: str,
    spec: Mapping[str, Any],
    existing: Iterable[RevisionFacts],
) -> RevisionFacts:
    """The revision for `digest`, created if new (numbered after the highest existing one)."""
    known = {r.digest: r for r in existing}
    if digest in known:
        return known[digest]
    number = max((r.number for r in known.values()), default=0) + 1
    name = revision_name(template, digest)
    body = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {TEMPLATE_LABEL: template, REVISION_LABEL: digest},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "VMTemplate",
                    "name": template,
                    "uid": template_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"spec": dict(spec)},
        "revision": number,
    }
    try:
        await kube.create(CONTROLLER_REVISIONS, namespace, body)
    except Conflict:
        stored = await kube.get(CONTROLLER_REVISIONS, namespace, name)
        number = int(stored.get("revision", number))
    return RevisionFacts(name=name, template=template, digest=digest, number=number, spec=dict(spec))


async def collect_garbage(
    kube: Kube, namespace: str, revisions: Iterable[RevisionFacts], keep: set[str]
) -> list[str]:
    """Delete revisions whose digest is not in `keep`; return their names."""
    deleted = []
    for revision in revisions:
        if revision.digest in keep:
            continue
        with contextlib.suppress(NotFound):
            await kube.delete(CONTROLLER_REVISIONS, namespace, revision.name)
        deleted.append(revision.name)
    return deleted


def revision_of(body: Mapping[str, Any]) -> RevisionFacts | None:
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    if TEMPLATE_LABEL not in labels or REVISION_LABEL not in labels:
        return None
    return RevisionFacts(
        name=str(meta.get("name", "")),
        template=str(labels[TEMPLATE_LABEL]),
        digest=str(labels[REVISION_LABEL]),
        number=int(body.get("revision", 0)),
        spec=dict((body.get("data") or {}).get("spec") or {}),
    )
