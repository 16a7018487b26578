"""Hypothesis fuzzing of the API models, rendering and the migration planner (pure, no cluster).

- models: JSON-like input that mixes schema-shaped values with garbage; parsing raises only
  pydantic.ValidationError, and the operator's template validation only returns problems;
- rendering: admission-valid templates and pools always render, and the VirtualMachine is one KubeVirt
  and the API server accept (KubeVirt's own schema, Kubernetes names and labels, consistent resources);
- planning: random fleets and plans never raise, every VM the goal concerns is planned exactly once or
  listed as unplaceable, targets are eligible and every limit holds.

Examples per test: 200 by default (`make test`); VIRTFLEET_FUZZ_EXAMPLES=10000 for the full run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, reject, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from virtfleet.api.base import QUANTITY_PATTERN
from virtfleet.api.crd import KINDS, openapi_schema
from virtfleet.api.labels import CPUMANAGER_LABEL, POOL_LABEL
from virtfleet.api.migrationplan import MigrationPlanSpec, MigrationPlanStatus
from virtfleet.api.pool import VirtualMachinePoolSpec
from virtfleet.api.quantity import parse_bytes, parse_millicores
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.capacity import Cell, NodeFacts, Placed, VMLoad
from virtfleet.core.kubevirt import LauncherRequests, launcher_requests
from virtfleet.core.migration_planner import (
    Limits,
    Move,
    PlanRequest,
    PlanVM,
    Timing,
    build_plan,
    plan_migrations,
)
from virtfleet.core.plans import planned_status
from virtfleet.core.render import PoolContext, RenderError, check_compatible, render_vm, vm_name
from virtfleet.core.status import wire
from virtfleet.core.validation import validate_template

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("VIRTFLEET_FUZZ_EXAMPLES", "200"))
settings.register_profile(
    "virtfleet-fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("virtfleet-fuzz")
GIB = 2**30
# The longest pool or template name admission accepts (metadata.name, a DNS subdomain). Lower it here if
# admission ever restricts these names further.
NAME_MAX = 253
POOL_NAME_MAX = 57  # admission: VM names <pool>-<ordinal> stay label values
TEMPLATE_NAME_MAX = 63  # admission: the template name is a label value

# Inputs the fuzzing found once, run in every run as explicit examples (docs/reliability.md).
ROOT_DISK = {"name": "root", "source": {"containerImage": "quay.io/containerdisks/fedora:40"}}

# -- Kubernetes naming rules (apimachinery's validation) ------------------------------------------------

DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name) is not None


def is_qualified_name(key: str) -> bool:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name of <= 63."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not is_subdomain(prefix):
        return False
    return len(name) <= 63 and LABEL_NAME.fullmatch(name) is not None


def label_problems(labels: Mapping[str, str], where: str) -> list[str]:
    problems = [f"{where}: key {k!r}" for k in labels if not is_qualified_name(k)]
    problems += [
        f"{where}[{k}]: value {v!r}" for k, v in labels.items() if len(v) > 63 or not LABEL_VALUE.fullmatch(v)
    ]
    return problems


# -- strategies: garbage and schema-shaped JSON --------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=40))
GARBAGE = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)

# Strings the quantity pattern admits: real quantities, extremes, and pattern-shaped nonsense.
QUANTITY_EDGES = [
    "4Gi", "1536Mi", "500m", "1e3", "2", "0.5Gi", "1.5Gi", "0", "-4Gi", "+1Gi", "1.2.3", "...", "1e",
    "4Mi5", "1iGi", "1e400", "1e-400", "1e9999999", "9" * 60 + "Ei", "1E", "0.000001n",
]  # fmt: skip
QUANTITIES = st.one_of(
    st.sampled_from(QUANTITY_EDGES),
    st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 64),
    st.builds(
        lambda n, s: f"{n}{s}", st.integers(0, 2**40), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M"])
    ),
)


def _string(node: Mapping[str, Any], garbage: bool) -> st.SearchStrategy[Any]:
    if node.get("pattern") == QUANTITY_PATTERN:
        return QUANTITIES
    low, high = node.get("minLength", 0), node.get("maxLength", 80)
    if node.get("format") == "date-time":
        valid: st.SearchStrategy[Any] = st.datetimes().map(lambda d: d.isoformat() + "Z")
    elif "pattern" in node:
        valid = st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: low <= len(s) <= high)
    else:
        valid = st.text(min_size=low, max_size=min(high, 80))
    if not garbage:
        return valid
    too_long = st.builds(
        lambda ch, extra: ch * (high + extra), st.sampled_from(["a", "é", "🚀", " "]), st.integers(1, 2)
    )
    return st.one_of(valid, st.text(max_size=80), too_long)


def schema_values(node: Mapping[str, Any], garbage: bool = True) -> st.SearchStrategy[Any]:
    """Values shaped by an OpenAPI (CRD) schema node. garbage=False: within the schema (CEL rules
    aside). garbage=True: often just outside it (bounds, lengths, enums, unknown fields), and sometimes
    any JSON-like value at all."""
    kind = node.get("type")
    shaped: st.SearchStrategy[Any]
    if "enum" in node:
        shaped = st.sampled_from(node["enum"])
        if garbage:
            shaped |= st.text(max_size=12)
    elif kind == "object":
        props = node.get("properties") or {}
        required = [k for k in node.get("required", []) if k in props]
        extra = node.get("additionalProperties")
        if props:
            shaped = st.fixed_dictionaries(
                {k: schema_values(props[k], garbage) for k in required},
                optional={k: schema_values(v, garbage) for k, v in props.items() if k not in required},
            )
            if garbage:
                unknown = st.dictionaries(st.text(min_size=1, max_size=10), GARBAGE, max_size=1)
                shaped = st.builds(lambda known, more: {**more, **known}, shaped, st.just({}) | unknown)
        elif isinstance(extra, dict):
            limit = node.get("maxProperties", 8)
            shaped = st.dictionaries(
                st.text(max_size=40),
                schema_values(extra, garbage),
                max_size=min(limit + 1 if garbage else limit, 6),
            )
        else:
            shaped = st.dictionaries(st.text(max_size=10), GARBAGE, max_size=3)
    elif kind == "array":
        limit = node.get("maxItems", 6)
        shaped = st.lists(
            schema_values(node.get("items", {}), garbage),
            min_size=node.get("minItems", 0),
            max_size=min(limit + 1 if garbage else limit, 6),
        )
    elif kind == "string":
        shaped = _string(node, garbage)
    elif kind == "integer":
        low, high = int(node.get("minimum", -(2**40))), int(node.get("maximum", 2**40))
        shaped = st.integers(low - 2, high + 2) if garbage else st.integers(low, high)
    elif kind == "number":
        low, high = float(node.get("minimum", -1e9)), float(node.get("maximum", 1e9))
        shaped = st.floats(low - 1, high + 1) if garbage else st.floats(low, high)
    elif kind == "boolean":
        shaped = st.booleans()
    else:
        shaped = GARBAGE
    if not garbage:
        return shaped
    return st.integers(0, 3).flatmap(lambda pick: shaped if pick else GARBAGE)  # garbage 1 time in 4


@cache
def object_strategy(kind_name: str, garbage: bool = True) -> st.SearchStrategy[Any]:
    kind = next(k for k in KINDS if k.kind == kind_name)
    properties = openapi_schema(kind.model)["properties"]
    return st.fixed_dictionaries(
        {"spec": schema_values(properties["spec"], garbage)},
        optional={"status": schema_values(properties["status"], garbage)},
    )


SPEC_MODELS: dict[str, type[BaseModel]] = {
    "VMTemplate": VMTemplateSpec,
    "VirtualMachinePool": VirtualMachinePoolSpec,
    "MigrationPlan": MigrationPlanSpec,
}


# -- (a) models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
@FUZZ
@given(data=st.data())
def test_models_raise_only_validation_errors(kind: str, data: st.DataObject) -> None:
    model = next(k.model for k in KINDS if k.kind == kind)
    spec_model = SPEC_MODELS[kind]
    body = data.draw(object_strategy(kind) | object_strategy(kind, garbage=False) | GARBAGE, label="object")
    event("parsed" if _parses(model, body) else "refused")
    spec = body.get("spec") if isinstance(body, dict) else body
    try:
        parsed = spec_model.model_validate(spec)
    except ValidationError:
        return
    # What parses also dumps, and the dump parses back to the same spec (what the operator stores).
    wire = parsed.model_dump(mode="json", by_alias=True)
    json.dumps(wire)
    assert spec_model.model_validate(wire) == parsed


def _parses(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


@FUZZ
@example(spec={"memory": {"guest": "1e9999999"}, "disks": [ROOT_DISK]})  # decimal.Overflow
@given(
    spec=st.one_of(object_strategy("VMTemplate"), object_strategy("VMTemplate", garbage=False)).map(
        lambda o: o["spec"]
    )
    | GARBAGE
)
def test_template_validation_reports_problems_never_raises(spec: Any) -> None:
    """The operator's check of a stored template (schema, then quantities and boot orders)."""
    parsed, problems = validate_template(spec if isinstance(spec, dict) else {"memory": spec})
    event("valid" if not problems else "parsed, with problems" if parsed else "refused")
    if parsed is None:
        assert problems, "a spec that does not parse must come with problems"
    for problem in problems:
        assert problem.field.startswith("spec"), problem
        assert problem.message, problem


# -- (b) rendering -------------------------------------------------------------------------------------

# Built from alphabets rather than regexes: st.from_regex is several times slower to draw from.
LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"


def _trimmed(alphabet: str, max_size: int, trim: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=1, max_size=max_size).map(lambda s: s.strip(trim) or "x")


dns_labels = _trimmed(LOWER + "-", 63, "-")
short_labels = _trimmed(LOWER + "-", 12, "-")
subdomains = st.lists(dns_labels, min_size=1, max_size=5).map(".".join).map(lambda s: s[:253].rstrip("-."))
label_names = _trimmed(LOWER + LOWER.upper() + "-_.", 22, "-_.")
label_keys = st.builds(
    lambda prefix, name: f"{prefix}/{name}" if prefix else name,
    st.none() | st.sampled_from(["example.com", "team.example.org", "app.kubernetes.io"]),
    label_names,
)
label_values = st.just("") | label_names
labels = st.dictionaries(label_keys, label_values, max_size=5)
annotations = st.dictionaries(label_keys, st.text(max_size=200), max_size=4)


def positive_quantities(max_gib: int = 1024) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda n: f"{n}Mi", st.integers(64, max_gib * 1024)),
        st.builds(lambda n: f"{n}Gi", st.integers(1, max_gib)),
        st.builds(lambda n: f"{n / 2}Gi", st.integers(1, 2 * max_gib)),
        st.builds(lambda n: str(n), st.integers(2**26, max_gib * GIB)),
        st.builds(lambda n: f"{n}e9", st.integers(1, max_gib)),
        # Valid for the schema and the operator's validation, and absurdly large.
        st.builds(lambda e: f"1e{e}", st.integers(18, 400)),
    )


@st.composite
def template_specs(draw: st.DrawFn) -> dict[str, Any]:
    policy = draw(st.sampled_from(["shared", "dedicated"]))
    sockets = draw(st.integers(1, 64))
    cpu: dict[str, Any] = {
        "sockets": sockets,
        "cores": draw(st.integers(1, 256)),
        "threads": draw(st.integers(1, 8)),
        "policy": policy,
    }
    if policy == "dedicated" and draw(st.booleans()):
        cpu["isolateEmulatorThread"] = True
    if draw(st.booleans()):
        cpu["maxSockets"] = draw(st.integers(sockets, 64))
    if draw(st.booleans()):
        cpu["model"] = draw(st.text(min_size=1, max_size=128))
    hugepages = draw(st.sampled_from([None, "2Mi", "1Gi"]))
    if hugepages == "2Mi":
        guest = f"{2 * draw(st.integers(1, 65536))}Mi"
    elif hugepages == "1Gi":
        guest = f"{draw(st.integers(1, 1024))}Gi"
    else:
        guest = draw(positive_quantities())
    memory: dict[str, Any] = {"guest": guest}
    if hugepages:
        memory["hugepages"] = hugepages
    if draw(st.booleans()):
        memory["maxGuest"] = f"{parse_bytes(guest) * draw(st.integers(1, 4))}"
    spec: dict[str, Any] = {"cpu": cpu, "memory": memory, "disks": draw(disk_lists())}
    if policy == "dedicated" and hugepages and draw(st.booleans()):
        spec["numa"] = {"guestMappingPassthrough": True}
    nics = draw(st.lists(interfaces(), max_size=4, unique_by=lambda i: i["name"]))
    for nic in [n for n in nics if n["type"] == "nat"][1:]:  # one pod network per VM (KubeVirt)
        nic.update(type="bridge", network="extra-" + nic["name"])
    spec["interfaces"] = nics
    spec["hostDevices"] = draw(
        st.lists(
            st.fixed_dictionaries({"name": short_labels, "deviceName": st.text(min_size=1, max_size=253)}),
            max_size=3,
            unique_by=lambda d: d["name"],
        )
    )
    cloud_init = draw(
        st.none()
        | st.builds(lambda text: {"userData": text}, st.text(max_size=300))
        | st.builds(lambda name: {"userDataSecretRef": {"name": name}}, subdomains)
    )
    if cloud_init is not None:
        spec["cloudInit"] = cloud_init
    spec["labels"] = draw(labels)
    spec["annotations"] = draw(annotations)
    spec["evictionStrategy"] = draw(
        st.sampled_from(["LiveMigrate", "LiveMigrateIfPossible", "External", "None"])
    )
    spec["runStrategy"] = draw(st.sampled_from(["Always", "Halted", "Manual", "RerunOnFailure", "Once"]))
    if draw(st.booleans()):
        spec["description"] = draw(st.text(max_size=1024))
    return spec


@st.composite
def disk_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(short_labels, min_size=1, max_size=5, unique=True))
    orders = draw(st.lists(st.integers(1, 64), min_size=len(names), max_size=len(names), unique=True))
    disks = []
    for index, name in enumerate(names):
        source = draw(st.sampled_from(["containerImage", "http", "clonePVC", "cloneSnapshot", "blank"]))
        disk: dict[str, Any] = {"name": name}
        if source == "containerImage":
            disk["source"] = {
                "containerImage": draw(
                    st.sampled_from(
                        [
                            "quay.io/containerdisks/fedora:40",
                            "registry.example.com:5000/os/debian@sha256:" + "a" * 64,
                        ]
                    )
                )
            }
        elif source == "http":
            disk["source"] = {"http": "https://images.example.com/" + draw(short_labels) + ".qcow2"}
        elif source in ("clonePVC", "cloneSnapshot"):
            ref = {"name": draw(subdomains)}
            if draw(st.booleans()):
                ref["namespace"] = draw(dns_labels)
            disk["source"] = {source: ref}
        else:
            disk["source"] = {"blank": True}
        if source != "containerImage" or draw(st.booleans()):
            disk["size"] = draw(positive_quantities(max_gib=4096))
        if draw(st.booleans()):
            disk["storageClass"] = draw(subdomains)
        disk["provisioning"] = draw(st.sampled_from(["thin", "thick"]))
        disk["bus"] = draw(st.sampled_from(["virtio", "sata", "scsi"]))
        if draw(st.booleans()):
            disk["bootOrder"] = orders[index]
        disks.append(disk)
    return disks


@st.composite
def interfaces(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["nat", "bridge", "sriov", "isolated"]))
    interface: dict[str, Any] = {"name": draw(short_labels), "type": kind}
    if kind != "nat":
        interface["network"] = draw(subdomains)
    if draw(st.booleans()):
        octets = draw(st.lists(st.integers(0, 255), min_size=6, max_size=6))
        interface["macAddress"] = ":".join(f"{o:02x}" for o in octets)
    interface["model"] = draw(st.sampled_from(["virtio", "e1000e"]))
    return interface


@st.composite
def pool_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": draw(st.integers(0, 10000)),
        "templateRef": {"name": draw(subdomains)[:TEMPLATE_NAME_MAX].rstrip("-.")},
        "allocation": draw(st.sampled_from(["static", "dynamic"])),
        "scaleInPolicy": draw(
            st.sampled_from(["HighestOrdinal", "Oldest", "Newest", "MostOversubscribedNode"])
        ),
        "paused": draw(st.booleans()),
    }
    if draw(st.booleans()):
        spec["templateRef"]["revision"] = draw(st.text("0123456789abcdef", min_size=10, max_size=10))
    if draw(st.booleans()):
        spec["cpuRatio"] = draw(st.sampled_from([1.0, 64.0]) | st.floats(1.0, 64.0))
    if draw(st.booleans()):
        spec["memoryRatio"] = draw(st.sampled_from([1.0, 8.0]) | st.floats(1.0, 8.0))
    placement: dict[str, Any] = {"nodeSelector": draw(labels)}
    if draw(st.booleans()):
        placement["spread"] = {"topologyKey": draw(label_keys), "maxSkew": draw(st.integers(1, 1000))}
    placement["antiAffinity"] = draw(st.sampled_from(["none", "preferred", "required"]))
    spec["placement"] = placement
    budgets = st.builds(str, st.integers(0, 100)) | st.builds(lambda n: f"{n}%", st.integers(0, 100))
    surge, unavailable = draw(budgets), draw(budgets)
    strategy = draw(st.sampled_from(["RollingUpdate", "OnDelete"]))
    if strategy == "RollingUpdate" and surge == unavailable == "0":
        surge = "1"  # the CEL rule: not both 0
    spec["updateStrategy"] = {
        "type": strategy,
        "maxSurge": surge,
        "maxUnavailable": unavailable,
        "readyTimeoutSeconds": draw(st.integers(10, 86400)),
    }
    if draw(st.booleans()):
        spec["runStrategy"] = draw(st.sampled_from(["Always", "Halted", "Manual", "RerunOnFailure", "Once"]))
    overrides: dict[str, Any] = {"labels": draw(labels), "annotations": draw(annotations)}
    if draw(st.booleans()):
        overrides["cpuModel"] = draw(st.text(min_size=1, max_size=128))
    if draw(st.booleans()):
        overrides["evictionStrategy"] = draw(
            st.sampled_from(["LiveMigrate", "LiveMigrateIfPossible", "External", "None"])
        )
    spec["overrides"] = overrides
    return spec


@cache
def kubevirt_vm_schema() -> dict[str, Any]:
    crd = yaml.safe_load(
        (REPO / "e2e" / "kubevirt-crds" / "v1.9.0" / "kubevirt.io_virtualmachines.yaml").read_text()
    )
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schema_violations(value: Any, node: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """What a structural-schema check (as the API server's, with strict field validation) refuses."""
    if value is None:
        if not node.get("nullable"):
            yield f"{path}: null"
        return
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            yield f"{path}: {value!r} is not an int or a string"
        elif isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value):
            yield f"{path}: {value!r} does not match {node['pattern']}"
        return
    if "enum" in node and value not in node["enum"]:
        yield f"{path}: {value!r} not in {node['enum']}"
    kind = node.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    if kind in checks and not checks[kind](value):
        yield f"{path}: {type(value).__name__} where the schema wants {kind}"
        return
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        for key in node.get("required", []):
            if key not in value:
                yield f"{path}.{key}: required"
        for key, item in value.items():
            if props is not None and key in props:
                yield from schema_violations(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from schema_violations(item, extra, f"{path}.{key}")
            elif props is not None and not node.get("x-kubernetes-preserve-unknown-fields"):
                yield f"{path}.{key}: unknown field"
    elif kind == "array":
        for index, item in enumerate(value):
            yield from schema_violations(item, node.get("items", {}), f"{path}[{index}]")
    elif kind == "string":
        if "maxLength" in node and len(value) > node["maxLength"]:
            yield f"{path}: longer than {node['maxLength']}"
        if "pattern" in node and not re.search(node["pattern"], value):
            yield f"{path}: {value!r} does not match {node['pattern']}"


def no_nulls(value: Any, path: str = "") -> Iterator[str]:
    if value is None:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from no_nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from no_nulls(item, f"{path}[{index}]")


@FUZZ
@example(  # a guest size beyond floats: OverflowError in the memory request and the launcher overhead
    template={"memory": {"guest": "1e400"}, "disks": [ROOT_DISK]},
    pool={"templateRef": {"name": "small"}},
    pool_name="web",
    namespace="ns",
    ordinal=0,
    default_cpu_ratio=1.0,
    default_memory_ratio=1.5,
)
@given(
    template=template_specs(),
    pool=pool_specs(),
    pool_name=subdomains.map(lambda name: name[:POOL_NAME_MAX].rstrip("-.")),
    namespace=dns_labels,
    ordinal=st.integers(0, 9999),
    default_cpu_ratio=st.sampled_from([1.0, 4.0]) | st.floats(1.0, 64.0),
    default_memory_ratio=st.sampled_from([1.0, 1.5]) | st.floats(1.0, 8.0),
)
def test_render_admission_valid_inputs(
    template: dict[str, Any],
    pool: dict[str, Any],
    pool_name: str,
    namespace: str,
    ordinal: int,
    default_cpu_ratio: float,
    default_memory_ratio: float,
) -> None:
    parsed, problems = validate_template(template)
    assume(parsed is not None and not problems)
    assert parsed is not None
    spec = VirtualMachinePoolSpec.model_validate(pool)
    cpu_ratio = spec.cpu_ratio or default_cpu_ratio
    memory_ratio = spec.memory_ratio or default_memory_ratio
    context = PoolContext(
        pool_name, namespace, "6f1c2f4e-0000-4000-8000-000000000000", spec, cpu_ratio, memory_ratio
    )
    template_name = spec.template_ref.name
    if check_compatible(parsed, cpu_ratio, memory_ratio):
        with pytest.raises(RenderError):
            render_vm(context, template_name, "0123456789", parsed, ordinal)
        return

    vm = render_vm(context, template_name, "0123456789", parsed, ordinal)
    assert vm == render_vm(context, template_name, "0123456789", parsed, ordinal)  # deterministic
    json.dumps(vm)
    assert list(no_nulls(vm)) == []
    assert list(schema_violations(vm, kubevirt_vm_schema())) == []

    meta = vm["metadata"]
    assert meta["name"] == vm_name(pool_name, ordinal) and is_subdomain(meta["name"]), meta["name"]
    assert meta["namespace"] == namespace
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("VirtualMachinePool", pool_name, True)
    assert label_problems(meta["labels"], "metadata.labels") == []
    assert meta["labels"][POOL_LABEL] == pool_name
    assert all(is_qualified_name(k) for k in meta["annotations"])
    vmi = vm["spec"]["template"]
    assert vmi["metadata"]["labels"] == meta["labels"]
    run_strategy = spec.run_strategy or parsed.run_strategy
    assert vm["spec"]["runStrategy"] == run_strategy

    domain = vmi["spec"]["domain"]
    cpu = parsed.cpu
    assert (domain["cpu"]["sockets"], domain["cpu"]["cores"], domain["cpu"]["threads"]) == (
        cpu.sockets,
        cpu.cores,
        cpu.threads,
    )
    dynamic = spec.allocation == "dynamic"
    assert ("maxSockets" in domain["cpu"]) == (dynamic and cpu.max_sockets is not None)
    assert ("maxGuest" in domain["memory"]) == (dynamic and parsed.memory.max_guest is not None)
    resources = domain["resources"]
    requests = resources["requests"]
    guest = parse_bytes(parsed.memory.guest)
    if cpu.policy == "dedicated":
        assert requests["cpu"] == resources["limits"]["cpu"] == str(cpu.vcpus)
        assert vmi["spec"]["nodeSelector"][CPUMANAGER_LABEL] == "true"
    else:
        assert parse_millicores(requests["cpu"]) == math.ceil(cpu.vcpus * 1000 / cpu_ratio)
        assert ("limits" in resources) == (not dynamic)
    if parsed.memory.hugepages:
        assert "memory" not in requests
    else:
        requested = parse_bytes(requests["memory"])
        assert requested <= guest and Decimal(requested) * Decimal(memory_ratio) >= guest

    # Every device has its volume; every DataVolume volume has its template.
    devices = domain["devices"]
    disk_names = [d["name"] for d in devices["disks"]]
    volume_names = [v["name"] for v in vmi["spec"]["volumes"]]
    assert len(set(disk_names)) == len(disk_names) and sorted(disk_names) == sorted(volume_names)
    templates = {t["metadata"]["name"] for t in vm["spec"].get("dataVolumeTemplates", [])}
    wanted = {v["dataVolume"]["name"] for v in vmi["spec"]["volumes"] if "dataVolume" in v}
    assert templates == wanted and all(is_subdomain(n) for n in templates)
    orders = [d["bootOrder"] for d in devices["disks"] if "bootOrder" in d]
    assert len(orders) == len(set(orders))
    nic_names = [i["name"] for i in devices["interfaces"]]
    assert sorted(nic_names) == sorted(n["name"] for n in vmi["spec"]["networks"])
    assert sum(1 for n in vmi["spec"]["networks"] if "pod" in n) <= 1
    assert devices.get("autoattachPodInterface", True) == bool(parsed.interfaces)

    # What the scheduler sees, as the operator's capacity accounting computes it.
    launcher = launcher_requests(vmi["spec"])
    assert launcher.vcpus == cpu.vcpus
    assert launcher.guest_memory_bytes == guest
    assert launcher.dedicated == (cpu.policy == "dedicated")


# -- (c) planning --------------------------------------------------------------------------------------

MOSTLY_TRUE = st.sampled_from([True, True, True, False])
HEALTHY = st.sampled_from([True] * 9 + [False])  # ready, schedulable, untainted: one node in ten is not
NODE_LABELS = st.fixed_dictionaries(
    {"zone": st.sampled_from(["a", "b"])},
    optional={"rack": st.sampled_from(["r1", "r2", "r3"]), CPUMANAGER_LABEL: st.just("true")},
)
SELECTORS = st.sampled_from([{}, {}, {"zone": "a"}]) | st.fixed_dictionaries(
    {}, optional={"zone": st.sampled_from(["a", "b"]), "rack": st.sampled_from(["r1", "r2", "r3"])}
)


@st.composite
def fleets(draw: st.DrawFn) -> list[NodeFacts]:
    count = draw(st.sampled_from([4, 6, 8]) | st.integers(1, 10))
    nodes = []
    for i in range(count):
        cores = draw(st.sampled_from([8, 16, 32, 64]) | st.integers(1, 64))
        cells = draw(
            st.sampled_from(
                [(), (Cell(cores, 8 * GIB, 4 * GIB),), (Cell(cores // 2 or 1), Cell(cores - cores // 2))]
            )
        )
        nodes.append(
            NodeFacts(
                name=f"node-{i}",
                labels=draw(NODE_LABELS),
                cpu_millis=cores * 1000,
                memory=draw(st.sampled_from([64, 128, 512]) | st.integers(1, 512)) * GIB,
                hugepages_1gi=draw(st.sampled_from([0, 16 * GIB])),
                hugepages_2mi=draw(st.sampled_from([0, 4 * GIB])),
                ready=draw(HEALTHY),
                schedulable=draw(HEALTHY),
                cells=cells,
                tainted=not draw(HEALTHY),
            )
        )
    return nodes


@st.composite
def vmi_requests(draw: st.DrawFn) -> LauncherRequests:
    cores = draw(st.sampled_from([1, 2, 4]) | st.integers(1, 16))
    dedicated = not draw(MOSTLY_TRUE)
    cpu: dict[str, Any] = {"cores": cores}
    memory: dict[str, Any] = {"guest": f"{draw(st.sampled_from([2, 4, 8]) | st.integers(1, 64))}Gi"}
    resources: dict[str, Any] = {}
    if dedicated:
        cpu["dedicatedCpuPlacement"] = True
        cpu["isolateEmulatorThread"] = draw(st.booleans())
        if draw(st.booleans()):
            memory["hugepages"] = {"pageSize": draw(st.sampled_from(["2Mi", "1Gi"]))}
            if draw(st.booleans()):
                cpu["numa"] = {"guestMappingPassthrough": {}}
    else:
        ratio = draw(st.sampled_from([1, 2, 4, 8]))
        resources["requests"] = {"cpu": f"{math.ceil(cores * 1000 / ratio)}m"}
    return launcher_requests({"domain": {"cpu": cpu, "memory": memory, "resources": resources}})


@st.composite
def plan_requests(draw: st.DrawFn) -> PlanRequest:
    nodes = draw(fleets())
    names = [n.name for n in nodes] + ["gone-node"]  # a VM may sit on a node that no longer exists
    # A pool's VMs share its placement rules (nodeSelector, required anti-affinity, topology spread).
    rules = {"": ((), False, None)} | {
        pool: (
            tuple(sorted(draw(SELECTORS).items())),
            not draw(MOSTLY_TRUE),
            draw(st.none() | st.tuples(st.sampled_from(["zone", "rack"]), st.integers(1, 3))),
        )
        for pool in ("web", "db")
    }
    vms = []
    for i in range(draw(st.sampled_from([10, 20, 30]) | st.integers(0, 30))):  # 0 VMs is a valid plan too
        pool = draw(st.sampled_from(["", "web", "db"]))
        node_selector, anti_affinity, spread = rules[pool]
        vms.append(
            PlanVM(
                key=f"ns/vm-{i}",
                pool=pool,
                node=draw(st.sampled_from(names)),
                node_selector=node_selector,
                anti_affinity=anti_affinity,
                spread=spread,
                requests=draw(vmi_requests()),
                cpu_ratio=draw(st.sampled_from([1.0, 2.0, 4.0, 8.0])),
                memory_ratio=draw(st.sampled_from([1.0, 1.5])),
                live_migratable=draw(MOSTLY_TRUE),
                priority=draw(st.integers(-5, 5)),
                dirty_rate_bps=draw(st.floats(0, 2e9)),
            )
        )
    bystanders = [
        VMLoad(draw(vmi_requests()), draw(st.sampled_from(names))) for _ in range(draw(st.integers(0, 5)))
    ]
    pool_nodes: dict[str, list[str]] = defaultdict(list)  # selected VMs and other VMs of the pools
    for vm in vms:
        if vm.pool:
            pool_nodes[vm.pool].append(vm.node)
    for pool in ("web", "db"):
        pool_nodes[pool] += draw(st.lists(st.sampled_from(names), max_size=3))
    keys = [vm.key for vm in vms] + ["ns/not-selected"]
    goal = draw(st.sampled_from(["drain", "move", "rebalance"]))
    # Drained nodes are never targets, whatever the goal; other goals mostly drain nothing.
    drained = st.lists(
        st.sampled_from(names), min_size=1 if goal == "drain" else 0, max_size=2 if goal == "drain" else 1
    )
    return PlanRequest(
        goal=goal,
        vms=vms,
        nodes=nodes,
        placed=[VMLoad(vm.requests, vm.node) for vm in vms] + bystanders,
        pool_nodes=dict(pool_nodes),
        drain_nodes=frozenset(draw(drained)),
        target_selector=draw(SELECTORS),
        cpu_threshold=draw(st.floats(0.1, 64)),
        memory_threshold=draw(st.floats(0.1, 8)),
        method=draw(st.sampled_from(["live", "cold", "liveWithColdFallback"])),
        order=draw(st.sampled_from(["priority", "smallestFirst", "largestFirst", "waves"])),
        waves=draw(st.lists(st.lists(st.sampled_from(keys), max_size=6), max_size=4)),
        limits=Limits(
            max_parallel=draw(st.integers(1, 8)),
            max_outbound_per_node=draw(st.integers(1, 4)),
            max_inbound_per_node=draw(st.integers(1, 4)),
            pool_budget=draw(st.sampled_from([1, 2, 3, 1_000_000])),
        ),
        timing=Timing(
            bandwidth_bps=draw(st.floats(1e6, 1e10)),
            max_downtime_s=draw(st.floats(0.001, 2000)),
            allow_post_copy=draw(st.booleans()),
            allow_auto_converge=draw(st.booleans()),
            completion_timeout_per_gib=draw(st.integers(1, 10000)),
        ),
    )


def peak(moves: list[Move], key: Callable[[Move], str]) -> dict[str, int]:
    """Most moves running at once per key (an end and a start at the same instant do not overlap)."""
    events = sorted([(m.start_s, 1, key(m)) for m in moves] + [(m.end_s, -1, key(m)) for m in moves])
    running: dict[str, int] = defaultdict(int)
    top: dict[str, int] = defaultdict(int)
    for _, delta, k in events:
        running[k] += delta
        top[k] = max(top[k], running[k])
    return top


def check_plan(request: PlanRequest) -> None:
    plan = plan_migrations(request)
    event(f"goal {request.goal}, order {request.order}")
    event("some moves planned" if plan.moves else "no move planned")
    event("some VMs unplaceable" if plan.unplaceable else "nothing unplaceable")
    by_key = {vm.key: vm for vm in request.vms}
    nodes = {n.name: n for n in request.nodes}
    selector = request.target_selector
    planned = [m.vm for m in plan.moves]
    listed = [name for name, _ in plan.unplaceable if not name.startswith("node/")]
    assert len(planned) == len(set(planned)), "a VM planned twice"
    assert len(listed) == len(set(listed)), "a VM listed unplaceable twice"
    assert not set(planned) & set(listed), "a VM both planned and unplaceable"
    assert set(planned) | set(listed) <= set(by_key)

    def off_target(vm: PlanVM) -> bool:
        node = nodes.get(vm.node)
        return node is None or any(node.labels.get(k) != v for k, v in selector.items())

    if request.goal == "drain":
        concerned = {vm.key for vm in request.vms if vm.node in request.drain_nodes}
    elif request.goal == "move":
        concerned = {vm.key for vm in request.vms if off_target(vm)}
    else:
        concerned = set(planned) | set(listed)  # rebalance chooses; what it chose is accounted for
    assert set(planned) | set(listed) == concerned, (
        f"not accounted for: {sorted(concerned - set(planned) - set(listed))}"
    )

    for move in plan.moves:
        vm = by_key[move.vm]
        target = nodes[move.target]
        assert (move.source, move.pool) == (vm.node, vm.pool)
        assert move.target != move.source and move.target not in request.drain_nodes
        assert target.ready and target.schedulable and not target.tainted
        assert all(target.labels.get(k) == v for k, v in selector.items())
        assert target.cpumanager or not vm.requests.dedicated
        assert all(target.labels.get(k) == v for k, v in vm.node_selector)
        assert vm.spread is None or vm.spread[0] in target.labels
        cold = not vm.live_migratable or request.method == "cold"
        assert move.method == ("cold" if cold else "live")
        assert move.start_s >= 0 and math.isfinite(move.end_s)
        assert 0 <= move.estimate.downtime_s <= move.estimate.duration_s + 1e-9
    if plan.moves:
        assert peak(plan.moves, lambda m: "all")["all"] <= request.limits.max_parallel
        assert max(peak(plan.moves, lambda m: m.source).values()) <= request.limits.max_outbound_per_node
        assert max(peak(plan.moves, lambda m: m.target).values()) <= request.limits.max_inbound_per_node
        assert max(peak(plan.moves, lambda m: m.pool).values()) <= request.limits.pool_budget
        assert plan.makespan_s == max(m.end_s for m in plan.moves)
    # Required anti-affinity: a target held no VM of the pool when chosen, and VMs only arrive there
    # afterwards. So at most one such VM per pool arrives on a node, and every VM of the pool that was
    # on that node (selected or not) has left it.
    arrivals: dict[tuple[str, str], int] = defaultdict(int)
    departures: dict[tuple[str, str], int] = defaultdict(int)
    for move in plan.moves:
        departures[(move.pool, move.source)] += 1
        if by_key[move.vm].anti_affinity:
            arrivals[(move.pool, move.target)] += 1
    for (pool, node), count in arrivals.items():
        assert count == 1, f"{count} anti-affine VMs of {pool} sent to {node}"
        assert departures[(pool, node)] >= list(request.pool_nodes.get(pool, ())).count(node), (pool, node)
    if request.order == "waves" and plan.moves:
        wave_of = {name: w for w, names in enumerate(request.waves) for name in names}
        for early in plan.moves:
            for late in plan.moves:
                if wave_of[early.vm] < wave_of[late.vm]:
                    assert early.end_s <= late.start_s + 1e-9, (early.vm, late.vm)


def _waves_case() -> PlanRequest:
    """Drain n0 in waves, where the first wave names only a VM that is not on n0."""
    nodes = [NodeFacts(f"n{i}", {}, 32_000, 256 * GIB) for i in range(3)]
    requests = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
    vms = [PlanVM("ns/on-n0", "web", "n0", requests), PlanVM("ns/on-n1", "web", "n1", requests)]
    return PlanRequest(
        "drain",
        vms,
        nodes,
        [VMLoad(vm.requests, vm.node) for vm in vms],
        drain_nodes=frozenset({"n0"}),
        order="waves",
        waves=[["ns/on-n1"], ["ns/on-n0"]],
    )


@FUZZ
@example(request=_waves_case())  # ns/on-n0 was neither planned nor listed unplaceable
@given(request=plan_requests())
def test_planner_accounts_for_every_vm_within_limits(request: PlanRequest) -> None:
    check_plan(request)


PLAN_FIELDS_DRAWN_HERE = ("nodes", "selection", "targetSelector", "waves")


@cache
def plan_spec_rest() -> st.SearchStrategy[Any]:
    """In-schema MigrationPlan specs without the fields plan_inputs draws from the fleet it makes."""
    kind = next(k for k in KINDS if k.kind == "MigrationPlan")
    spec = dict(openapi_schema(kind.model)["properties"]["spec"])
    spec["properties"] = {k: v for k, v in spec["properties"].items() if k not in PLAN_FIELDS_DRAWN_HERE}
    return schema_values(spec, garbage=False)


@st.composite
def plan_inputs(draw: st.DrawFn) -> tuple[MigrationPlanSpec, list[Placed], list[NodeFacts]]:
    """A MigrationPlanSpec the model accepts (CEL rules may not hold: the operator must cope either
    way) and the VMIs the operator's indexes would hold, annotations users set included."""
    raw = draw(plan_spec_rest())
    nodes = draw(fleets())
    names = [n.name for n in nodes]
    vm_names = [f"vm-{i}" for i in range(draw(st.integers(0, 20)))]
    rules = {
        pool: {
            "node_selector": tuple(sorted(draw(SELECTORS).items())),
            "anti_affinity": not draw(MOSTLY_TRUE),
            "spread": draw(st.none() | st.tuples(st.sampled_from(["zone", "rack"]), st.integers(1, 3))),
        }
        for pool in ("web", "db")
    }
    placements = []
    for name in vm_names:
        pool = draw(st.sampled_from(["web", "db"]))
        hints = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "virtfleet.io/dirty-rate": QUANTITIES | st.text(max_size=10),
                    "virtfleet.io/priority": st.builds(str, st.integers()) | st.text(max_size=5),
                },
            )
        )
        placements.append(
            Placed(
                key=f"{draw(st.sampled_from(['ns', 'other']))}/{name}",
                node=draw(st.none() | st.sampled_from(names)),
                requests=draw(vmi_requests()),
                labels=((POOL_LABEL, pool),),
                live_migratable=draw(st.booleans()),
                annotations=tuple(hints.items()),
                **rules[pool],
            )
        )
    some_nodes = st.lists(st.sampled_from(names), max_size=3)
    some_vms = st.lists(st.sampled_from(vm_names or ["vm-0"]), max_size=4)
    raw["nodes"] = draw(some_nodes)
    raw["selection"] = {
        "vms": draw(some_vms),
        "nodes": draw(some_nodes),
        "pools": draw(st.lists(st.sampled_from(["web", "db"]), max_size=2)),
    }
    raw["targetSelector"] = draw(SELECTORS)
    raw["waves"] = draw(st.lists(some_vms, max_size=3))
    try:
        return MigrationPlanSpec.model_validate(raw), placements, nodes
    except ValidationError:
        reject()


def _handler_case(bandwidth: str | None = None, dirty_rate: str | None = None) -> tuple[Any, ...]:
    node = [NodeFacts("n0", {}, 32_000, 256 * GIB), NodeFacts("n1", {}, 32_000, 256 * GIB)]
    requests = launcher_requests({"domain": {"cpu": {"cores": 2}, "memory": {"guest": "4Gi"}}})
    hints = (("virtfleet.io/dirty-rate", dirty_rate),) if dirty_rate else ()
    placed = [
        Placed(key="ns/vm-0", node="n0", requests=requests, labels=((POOL_LABEL, "web"),), annotations=hints)
    ]
    migration = {"bandwidthPerMigration": bandwidth} if bandwidth else {}
    spec = MigrationPlanSpec.model_validate(
        {"goal": "drain", "nodes": ["n0"], "dryRun": True, "migration": migration}
    )
    return spec, placed, node


@FUZZ
@example(inputs=_handler_case(bandwidth="1n"), ratios={})  # the smallest bandwidth admission allows
@example(inputs=_handler_case(bandwidth="1Pi"), ratios={})  # the largest
@example(inputs=_handler_case(dirty_rate="-5"), ratios={})  # precopy.ModelError from a VMI annotation
@example(inputs=_handler_case(dirty_rate="1e400"), ratios={})  # OverflowError from a VMI annotation
@given(
    inputs=plan_inputs(),
    ratios=st.dictionaries(st.sampled_from(["web", "db"]), st.tuples(st.floats(1, 64), st.floats(1, 8))),
)
def test_plan_handler_path_never_raises_and_writes_a_valid_status(
    inputs: tuple[MigrationPlanSpec, list[Placed], list[NodeFacts]], ratios: dict[str, tuple[float, float]]
) -> None:
    """What the MigrationPlan handler does with a parsed spec: select, plan, and write status."""
    spec, placements, nodes = inputs
    plan = build_plan(spec, "ns", placements, nodes, ratios)
    status = wire(planned_status(spec, plan, {}, 1, datetime(2026, 12, 1, tzinfo=UTC)))
    MigrationPlanStatus.model_validate(status)
    json.dumps(status)
