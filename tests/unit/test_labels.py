"""The label and annotation keys are a wire format: users, GitOps tools and dashboards select on them."""

from __future__ import annotations

from virtfleet.api import labels

WIRE = {
    "POOL_LABEL": "virtfleet.io/pool",
    "TEMPLATE_LABEL": "virtfleet.io/template",
    "REVISION_LABEL": "virtfleet.io/template-revision",
    "ORDINAL_LABEL": "virtfleet.io/ordinal",
    "POOL_HASH_ANNOTATION": "virtfleet.io/pool-hash",
    "CPU_RATIO_ANNOTATION": "virtfleet.io/cpu-ratio",
    "MEMORY_RATIO_ANNOTATION": "virtfleet.io/memory-ratio",
    "DIRTY_RATE_ANNOTATION": "virtfleet.io/dirty-rate",
    "PRIORITY_ANNOTATION": "virtfleet.io/priority",
    "NUMA_ANNOTATION": "virtfleet.io/numa-topology",
    "PLAN_LABEL": "virtfleet.io/migration-plan",
    "ATTEMPT_LABEL": "virtfleet.io/attempt",
    "VM_ANNOTATION": "virtfleet.io/vm",
    "PLAN_ANNOTATION": "virtfleet.io/plan",
    "COLD_MOVE_ANNOTATION": "virtfleet.io/cold-move",
    "CORDONED_BY_ANNOTATION": "virtfleet.io/cordoned-by",
    "HOSTNAME_LABEL": "kubernetes.io/hostname",
    "NAMESPACE_NAME_LABEL": "kubernetes.io/metadata.name",
    "MANAGED_BY_LABEL": "app.kubernetes.io/managed-by",
    "CPUMANAGER_LABEL": "kubevirt.io/cpumanager",
}


def test_every_key_keeps_its_wire_value() -> None:
    defined = {name: value for name, value in vars(labels).items() if name.isupper()}
    assert defined == WIRE
