"""Which KubeVirt virtfleet talks to, and which of the optional fields it writes that KubeVirt admits (pure).

Users run several KubeVirt releases. virtfleet writes fields with `fieldValidation=Strict`, so a field the
installed KubeVirt does not know fails the write instead of being pruned; the fields virtfleet adds on its
own must therefore follow what the cluster serves. It reads that from the served CRD schemas, not from a
version table, so a backport or a downstream build (Harvester, OpenShift Virtualization) is judged by what
it really admits. The version (the KubeVirt CR's `status.observedKubeVirtVersion`) is reported alongside.

Known differences between the KubeVirt releases checked here (docs/kubevirt.md):
- MigrationPolicy `spec.maxDowntimeMs`: v1.9.0 serves it, v1.7.0 does not. Without it QEMU's own default
  downtime limit (300 ms) applies, and the plan's estimates use that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

QEMU_DEFAULT_MAX_DOWNTIME_MS = 300  # QEMU's downtime-limit when KubeVirt sets none
MIGRATION_POLICY_CRD = "migrationpolicies.migrations.kubevirt.io"
MIGRATION_POLICY_VERSION = "v1alpha1"
# MigrationPolicy spec fields newer than the oldest KubeVirt virtfleet supports; written only when served.
OPTIONAL_POLICY_FIELDS = frozenset({"maxDowntimeMs"})


@dataclass(frozen=True)
class KubeVirtAPI:
    """What the cluster's KubeVirt admits of what virtfleet writes."""

    version: str = ""  # "" when no KubeVirt CR could be read (the twin, or no RBAC to read it)
    policy_fields: frozenset[str] = frozenset()  # served MigrationPolicy spec fields; empty when unknown

    @classmethod
    def from_cluster(
        cls, kubevirt_crs: Iterable[Mapping[str, Any]], policy_crd: Mapping[str, Any] | None
    ) -> KubeVirtAPI:
        versions = sorted(
            {str((cr.get("status") or {}).get("observedKubeVirtVersion") or "") for cr in kubevirt_crs} - {""}
        )
        return cls(version=",".join(versions), policy_fields=served_spec_fields(policy_crd))

    @property
    def max_downtime_supported(self) -> bool:
        return "maxDowntimeMs" in self.policy_fields

    def max_downtime_ms(self, wanted_ms: int) -> int:
        """The downtime limit migrations really get: the plan's where KubeVirt passes it on, QEMU's default
        where it cannot."""
        return wanted_ms if self.max_downtime_supported else QEMU_DEFAULT_MAX_DOWNTIME_MS

    def unsupported_policy_fields(self, policy_spec: Mapping[str, Any]) -> list[str]:
        """Optional fields of a rendered MigrationPolicy spec that this KubeVirt does not serve."""
        return sorted(f for f in OPTIONAL_POLICY_FIELDS if f in policy_spec and f not in self.policy_fields)

    def describe(self) -> str:
        version = self.version or "unknown version"
        served = "serves" if self.max_downtime_supported else "does not serve"
        return f"KubeVirt {version}; its MigrationPolicy {served} spec.maxDowntimeMs"


# What a KubeVirt serving every field virtfleet knows admits (v1.9.0): pure callers' default.
FULL_KUBEVIRT_API = KubeVirtAPI(policy_fields=OPTIONAL_POLICY_FIELDS)


def served_spec_fields(
    crd: Mapping[str, Any] | None, version: str = MIGRATION_POLICY_VERSION
) -> frozenset[str]:
    """The top-level spec fields of one served version of a CRD; empty when the CRD is absent."""
    for served in ((crd or {}).get("spec") or {}).get("versions") or []:
        if served.get("name") == version and served.get("served", True):
            schema = (served.get("schema") or {}).get("openAPIV3Schema") or {}
            spec = (schema.get("properties") or {}).get("spec") or {}
            return frozenset((spec.get("properties") or {}).keys())
    return frozenset()
