"""virtfleet.kube.pools.reconcile_pool against a fake client that fails on any call not allowed: what a
reconcile writes, and that a converged pool writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fake_kube import FakeKube, runtime_with

from virtfleet.api import reasons
from virtfleet.core.capacity import NodeFacts
from virtfleet.core.pools import Member, PoolInputs
from virtfleet.core.revisions import RevisionFacts, TemplateFacts, revision_hash
from virtfleet.kube.client import VIRTUAL_MACHINE_POOLS, VIRTUAL_MACHINES
from virtfleet.kube.pools import PoolOutcome, reconcile_pool
from virtfleet.kube.runtime import Runtime

GIB = 2**30
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TEMPLATE = {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"},
            "disks": [{"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}]}  # fmt: skip
DIGEST = revision_hash(TEMPLATE)
NODES = [NodeFacts(f"n{i}", {}, 32_000, 256 * GIB) for i in range(2)]


def inputs(
    status: dict[str, Any] | None = None, members: list[Member] | None = None, **spec: Any
) -> PoolInputs:
    return PoolInputs(
        namespace="ns",
        name="web",
        uid="pool-uid",
        generation=1,
        spec={"replicas": 2, "templateRef": {"name": "t"}, **spec},
        status=status or {},
        template=TemplateFacts("t", "t-uid", 1, TEMPLATE, DIGEST),
        revisions=[RevisionFacts(f"t-{DIGEST}", "t", DIGEST, 1, TEMPLATE)],
        members=members or [],
        placements=[],
        nodes=NODES,
    )


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("virtfleet.kube.runtime.Runtime.now", staticmethod(lambda: NOW))


@pytest.mark.usefixtures("frozen")
async def test_a_new_pool_creates_its_vms_and_writes_status_once() -> None:
    kube = FakeKube(("create", VIRTUAL_MACHINES), ("patch/status", VIRTUAL_MACHINE_POOLS))
    outcome = await reconcile_pool(runtime_with(kube), inputs())
    assert sorted(kube.writes("create", "virtualmachines")) == ["ns/web-0", "ns/web-1"]
    assert kube.writes("patch/status", "virtualmachinepools") == ["ns/web"]
    # One event for what the reconcile did, not one per VM.
    assert outcome.events == [
        ("Normal", reasons.SUCCESSFUL_CREATE, "created 2 VirtualMachines: web-0, web-1")
    ]
    assert outcome.status["updateRevision"] == DIGEST and outcome.status["pendingReplicas"] == 0
    # The creates are in flight until the watch shows them: look again when they would expire.
    assert outcome.wake_at is not None and outcome.wake_at > NOW


@pytest.mark.usefixtures("frozen")
async def test_a_converged_pool_writes_nothing() -> None:
    runtime, created, members = await _two_ready_vms()
    runtime.kube = FakeKube(("patch/status", VIRTUAL_MACHINE_POOLS))  # type: ignore[assignment]
    ready = await reconcile_pool(runtime, inputs(created.status, members))  # the VMs became Ready
    kube = FakeKube()  # nothing allowed: any write fails the test
    runtime.kube = kube  # type: ignore[assignment]
    outcome = await reconcile_pool(runtime, inputs(ready.status, members))
    assert kube.calls == []
    assert outcome.events == [] and outcome.wake_at is None
    assert outcome.rollout_done_template == "t"


@pytest.mark.usefixtures("frozen")
async def test_a_missing_template_is_reported_and_no_vm_is_touched() -> None:
    kube = FakeKube(("patch/status", VIRTUAL_MACHINE_POOLS))
    pool = inputs(members=[Member("web-0", 0, DIGEST, "h", True, NOW)])
    pool = PoolInputs(**{**pool.__dict__, "template": None, "revisions": []})
    outcome = await reconcile_pool(runtime_with(kube), pool)
    assert kube.writes("patch/status", "virtualmachinepools") == ["ns/web"]
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reasons.TEMPLATE_NOT_FOUND)
    assert outcome.wake_at is None


@pytest.mark.usefixtures("frozen")
async def test_scale_in_deletes_only_the_surplus() -> None:
    runtime, created, members = await _two_ready_vms()
    kube = FakeKube(("delete", VIRTUAL_MACHINES), ("patch/status", VIRTUAL_MACHINE_POOLS),
                    objects={("", "virtualmachines", "ns/web-1"): {}})  # fmt: skip
    runtime.kube = kube  # type: ignore[assignment]
    outcome = await reconcile_pool(runtime, inputs(created.status, members, replicas=1))
    assert kube.writes("delete", "virtualmachines") == ["ns/web-1"]
    assert kube.writes("create", "virtualmachines") == []
    assert [reason for _, reason, _ in outcome.events] == [reasons.SUCCESSFUL_DELETE]


async def _two_ready_vms() -> tuple[Runtime, PoolOutcome, list[Member]]:
    """A new pool's first reconcile, and its two VMs as the watch then shows them, Ready."""
    first = FakeKube(("create", VIRTUAL_MACHINES), ("patch/status", VIRTUAL_MACHINE_POOLS))
    runtime = runtime_with(first)
    created = await reconcile_pool(runtime, inputs())
    hashes = [first.objects["virtualmachines", f"ns/web-{i}"]["metadata"]["annotations"]["virtfleet.io/pool-hash"]
              for i in range(2)]  # fmt: skip
    return (
        runtime,
        created,
        [Member(f"web-{i}", i, DIGEST, hashes[i], True, NOW, uid=f"u{i}") for i in range(2)],
    )
