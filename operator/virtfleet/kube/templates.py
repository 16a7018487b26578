"""VMTemplate reconcile: validation verdict, revisions (ControllerRevisions) and their garbage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from virtfleet.core.revisions import RevisionFacts, revision_hash
from virtfleet.core.templates import TemplateVerdict, evaluate_template
from virtfleet.core.validation import validate_template
from virtfleet.kube.revisions import collect_garbage, ensure_revision
from virtfleet.kube.runtime import Runtime


async def reconcile_template(
    runtime: Runtime,
    namespace: str,
    name: str,
    uid: str,
    generation: int | None,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    revisions: Iterable[RevisionFacts],
) -> TemplateVerdict:
    """Validate; for a valid spec make sure its revision exists and status lists it."""
    verdict = evaluate_template(spec, status, generation, datetime.now(UTC))
    known = sorted(revisions, key=lambda r: r.number)
    if verdict.parsed is not None and verdict.valid:
        normalised = verdict.parsed.model_dump(mode="json", by_alias=True)
        digest = revision_hash(normalised)
        current = await ensure_revision(runtime.kube, namespace, name, uid, digest, normalised, known)
        if current.digest not in {r.digest for r in known}:
            known.append(current)
        listed = [{"name": r.digest, "revision": r.number} for r in sorted(known, key=lambda r: r.number)]
        if status.get("currentRevision") != digest:
            verdict.status_patch["currentRevision"] = digest
        if status.get("revisions") != listed:
            verdict.status_patch["revisions"] = listed
    return verdict


def revisions_in_use(
    namespace: str,
    template: str,
    current: str | None,
    pools: Iterable[tuple[str, frozenset[str]]],
    members: Mapping[Any, Iterable[Any]],
) -> set[str]:
    """Digests still needed: the current one, pinned or running in a pool, or on any pool VM."""
    keep = {current} if current else set()
    for pool, used in pools:
        keep |= set(used)
        keep |= {m.revision for m in members.get((namespace, pool), ())}
    return keep


async def collect_unused_revisions(
    runtime: Runtime,
    namespace: str,
    template: str,
    revisions: Mapping[Any, Iterable[RevisionFacts]],
    pools_by_template: Mapping[Any, Iterable[tuple[str, frozenset[str]]]],
    members: Mapping[Any, Iterable[Any]],
    current: str,
    template_spec: Mapping[str, Any] | None = None,
) -> list[str]:
    """Delete the template's revisions nothing needs. `current` is the template's current revision as
    its status says (never guessed: a template set back to an earlier spec reuses that spec's older,
    lower-numbered revision), and the revision of `template_spec` (the spec as last seen, which may be
    newer than that status) is kept too."""
    known = list(revisions.get((namespace, template), ()))
    pools = list(pools_by_template.get((namespace, template), ()))
    # The usual case, checked without walking every member of every pool (thousands, on each reconcile
    # of a rolled-out pool): every revision is current or pinned or used by some pool.
    if {r.digest for r in known} <= {current}.union(*(used for _, used in pools)):
        return []
    keep = revisions_in_use(namespace, template, current, pools, members)
    if template_spec is not None:
        parsed, problems = validate_template(template_spec)
        if parsed is not None and not problems:
            keep.add(revision_hash(parsed.model_dump(mode="json", by_alias=True)))
    return await collect_garbage(runtime.kube, namespace, known, keep)
