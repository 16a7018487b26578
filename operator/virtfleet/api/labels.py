"""Every label and annotation key virtfleet reads or writes: users, GitOps tools and dashboards select
and read them, so each is spelled once, here, and never changes (the twin's own `twin.virtfleet.io/*`
test controls stay in the twin, which the operator never imports)."""

from __future__ import annotations

from collections.abc import Mapping

# -- on the VirtualMachines of a pool (and their VMIs) ------------------------------------------------
POOL_LABEL = "virtfleet.io/pool"
TEMPLATE_LABEL = "virtfleet.io/template"  # also on a template's ControllerRevisions
REVISION_LABEL = "virtfleet.io/template-revision"  # also the digest label on a ControllerRevision
ORDINAL_LABEL = "virtfleet.io/ordinal"
POOL_HASH_ANNOTATION = "virtfleet.io/pool-hash"
CPU_RATIO_ANNOTATION = "virtfleet.io/cpu-ratio"
MEMORY_RATIO_ANNOTATION = "virtfleet.io/memory-ratio"

# -- set by users, read by the migration planner ------------------------------------------------------
DIRTY_RATE_ANNOTATION = "virtfleet.io/dirty-rate"  # on a VMI: guest memory dirtied per second
PRIORITY_ANNOTATION = "virtfleet.io/priority"  # on a VMI: higher moves first
NUMA_ANNOTATION = "virtfleet.io/numa-topology"  # on a node: its NUMA cells as JSON

# -- written by a MigrationPlan ------------------------------------------------------------------------
# Ties migrations, VMIs (for the MigrationPolicy) and the policy to a plan: its UID, because a plan's
# name can be longer than a label value.
PLAN_LABEL = "virtfleet.io/migration-plan"
ATTEMPT_LABEL = "virtfleet.io/attempt"  # on a migration: the attempt's number
VM_ANNOTATION = "virtfleet.io/vm"  # on a migration: the VM it moves
PLAN_ANNOTATION = "virtfleet.io/plan"  # on a MigrationPolicy: namespace/name of its plan
COLD_MOVE_ANNOTATION = "virtfleet.io/cold-move"  # on a VM: the cold move in progress, as JSON
CORDONED_BY_ANNOTATION = "virtfleet.io/cordoned-by"  # on a node: the plan that cordoned it

# -- Kubernetes' and KubeVirt's own keys we read or write ---------------------------------------------
HOSTNAME_LABEL = "kubernetes.io/hostname"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CPUMANAGER_LABEL = "kubevirt.io/cpumanager"


def matches(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    """A set-based selector's matchLabels (or a nodeSelector): every key present with its value."""
    return all(labels.get(key) == value for key, value in (selector or {}).items())
