"""Find out which KubeVirt the operator talks to, once at start-up (docs/kubevirt.md)."""

from __future__ import annotations

import logging
from typing import Any

from virtfleet.core.kubevirt_api import MIGRATION_POLICY_CRD, KubeVirtAPI
from virtfleet.kube.client import ApiError, Kube, ResourceRef

CRDS = ResourceRef("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
KUBEVIRTS = ResourceRef("kubevirt.io", "v1", "kubevirts")

log = logging.getLogger(__name__)


async def discover_kubevirt(kube: Kube) -> KubeVirtAPI:
    """The served MigrationPolicy schema and the KubeVirt CRs' observed version. What cannot be read counts
    as not served, so virtfleet never writes an optional field a cluster might refuse."""
    policy_crd: dict[str, Any] | None = None
    kubevirt_crs: list[dict[str, Any]] = []
    try:
        policy_crd = await kube.get(CRDS, None, MIGRATION_POLICY_CRD)
    except ApiError as error:
        log.warning("cannot read CRD %s (%s): writing no optional MigrationPolicy fields", MIGRATION_POLICY_CRD,
                    error.status)  # fmt: skip
    try:
        kubevirt_crs = list((await kube.list(KUBEVIRTS)).get("items") or [])
    except ApiError as error:
        log.warning("cannot list KubeVirt CRs (%s): KubeVirt version unknown", error.status)
    found = KubeVirtAPI.from_cluster(kubevirt_crs, policy_crd)
    log.info("talking to %s", found.describe())
    return found
