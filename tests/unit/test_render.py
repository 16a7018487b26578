"""Rendering a pool member into a KubeVirt VirtualMachine, against golden files.

Regenerate the goldens after an intended change: VIRTFLEET_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.kubevirt import launcher_requests
from virtfleet.core.render import (
    PoolContext,
    RenderError,
    check_compatible,
    hotplug_only,
    live_update_patch,
    render_vm,
)
from virtfleet.core.revisions import revision_hash

DATA = Path(__file__).resolve().parents[1] / "data" / "render"
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in DATA.glob("*.yaml"))


def render_case(case: str, ordinal: int = 0) -> dict[str, Any]:
    data = yaml.safe_load((DATA / f"{case}.yaml").read_text())
    template = VMTemplateSpec.model_validate(data["template"])
    pool = VirtualMachinePoolSpec.model_validate(data["pool"])
    context = PoolContext(
        name=case,
        namespace="golden",
        uid="00000000-0000-4000-8000-000000000000",
        spec=pool,
        cpu_ratio=pool.cpu_ratio or 1.0,
        memory_ratio=pool.memory_ratio or 1.0,
    )
    digest = revision_hash(template.model_dump(mode="json", by_alias=True))
    return render_vm(context, pool.template_ref.name, digest, template, ordinal)


@pytest.mark.parametrize("case", CASES)
def test_matches_golden(case: str) -> None:
    rendered = yaml.safe_dump(render_case(case), sort_keys=True)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("VIRTFLEET_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"no golden for {case}; run with VIRTFLEET_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


def test_every_case_has_a_golden_and_nothing_else_is_there() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == CASES
    assert len(CASES) >= 7


def test_oversubscribed_requests() -> None:
    vm = render_case("oversubscribed-4to1")
    resources = vm["spec"]["template"]["spec"]["domain"]["resources"]
    assert resources["requests"]["cpu"] == "1000m"  # 4 vCPUs / 4
    assert resources["limits"]["cpu"] == "4"
    assert int(resources["requests"]["memory"]) == 6 * 2**30 * 2 // 3  # 6Gi / 1.5
    # What the scheduler sees (KubeVirt's rendering) follows the same numbers.
    requests = launcher_requests(vm["spec"]["template"]["spec"])
    assert requests.cpu_millis == 1000


def test_dedicated_is_guaranteed_and_pinned() -> None:
    vm = render_case("dedicated-pinned")
    spec = vm["spec"]["template"]["spec"]
    resources = spec["domain"]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "8", "memory": "16Gi"}
    assert spec["nodeSelector"]["kubevirt.io/cpumanager"] == "true"
    assert launcher_requests(spec).dedicated_cores == 9  # 8 + the isolated emulator thread


def test_pool_and_revision_labels_reach_the_vmi() -> None:
    vm = render_case("cloudinit-secret", ordinal=7)
    assert vm["metadata"]["name"] == "cloudinit-secret-7"
    labels = vm["spec"]["template"]["metadata"]["labels"]
    assert labels["virtfleet.io/pool"] == "cloudinit-secret" and labels["virtfleet.io/ordinal"] == "7"
    assert labels["team"] == "ml" and labels["tier"] == "batch"
    assert vm["metadata"]["ownerReferences"][0]["controller"] is True


@pytest.mark.parametrize(
    ("policy", "cpu", "memory", "hugepages", "field"),
    [("dedicated", 4, 1, None, "spec.cpuRatio"), ("shared", 1, 1.5, "2Mi", "spec.memoryRatio")],
)
def test_incompatible_pool_and_template(
    policy: str, cpu: float, memory: float, hugepages: str | None, field: str
) -> None:
    template = VMTemplateSpec.model_validate(
        {"cpu": {"policy": policy}, "memory": {"guest": "4Gi", "hugepages": hugepages},
         "disks": [{"name": "root", "source": {"containerImage": "x"}}]}
    )  # fmt: skip
    problems = check_compatible(template, cpu, memory)
    assert len(problems) == 1 and problems[0].startswith(field)
    pool = VirtualMachinePoolSpec.model_validate({"templateRef": {"name": "t"}})
    with pytest.raises(RenderError, match=field):
        render_vm(PoolContext("p", "ns", "uid", pool, cpu, memory), "t", "0123456789", template, 0)


def test_socket_and_memory_changes_within_bounds_are_hot_pluggable() -> None:
    data = yaml.safe_load((DATA / "dynamic-allocation.yaml").read_text())
    before = VMTemplateSpec.model_validate(data["template"])

    def changed(**cpu: Any) -> VMTemplateSpec:
        return before.model_copy(update={"cpu": before.cpu.model_copy(update=cpu)})

    assert hotplug_only(before, changed(sockets=4))
    assert hotplug_only(
        before, before.model_copy(update={"memory": before.memory.model_copy(update={"guest": "8Gi"})})
    )
    assert not hotplug_only(before, changed(sockets=9))  # beyond maxSockets 8
    # Real KubeVirt sets RestartRequired for fewer sockets or less memory than the VM booted with.
    assert not hotplug_only(before, changed(sockets=1))
    assert not hotplug_only(
        before, before.model_copy(update={"memory": before.memory.model_copy(update={"guest": "2Gi"})})
    )
    assert not hotplug_only(before, changed(cores=4))  # cores are not hot-pluggable
    assert not hotplug_only(before, before.model_copy(update={"eviction_strategy": "External"}))
    static = VMTemplateSpec.model_validate(
        {**data["template"], "cpu": {"sockets": 2}, "memory": {"guest": "4Gi"}}
    )
    assert not hotplug_only(
        static, static.model_copy(update={"cpu": static.cpu.model_copy(update={"sockets": 3})})
    )


def test_a_live_update_touches_only_what_kubevirt_live_updates() -> None:
    """Found on real KubeVirt v1.7.0: applying the whole new rendering also changed resources.requests,
    which KubeVirt does not live-update, so the VM carried RestartRequired and the guest kept its old size."""
    data = yaml.safe_load((DATA / "dynamic-allocation.yaml").read_text())
    template = VMTemplateSpec.model_validate(data["template"])
    bigger = template.model_copy(update={"cpu": template.cpu.model_copy(update={"sockets": 4})})
    pool = VirtualMachinePoolSpec.model_validate(data["pool"])
    context = PoolContext("p", "ns", "uid", pool, 2, 1)
    before = render_vm(context, "t", "0123456789", template, 0)
    after = render_vm(context, "t", "abcdef0123", bigger, 0)
    patch = live_update_patch(after)
    assert patch["spec"] == {
        "template": {
            "metadata": after["spec"]["template"]["metadata"],
            "spec": {"domain": {"cpu": {"sockets": 4}, "memory": {"guest": "4Gi"}}},
        }
    }
    assert patch["metadata"]["labels"]["virtfleet.io/template-revision"] == "abcdef0123"
    # The requests did change in the rendering; the patch leaves them to KubeVirt.
    resources = "resources"
    assert (
        before["spec"]["template"]["spec"]["domain"][resources]
        != after["spec"]["template"]["spec"]["domain"][resources]
    )
