"""Generate CustomResourceDefinitions from the pydantic models.

The models are the single source of the schemas: `virtfleet crds` writes crds/*.yaml from here and a unit
test fails when the checked-in files are stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from virtfleet import GROUP, VERSION
from virtfleet.api.migrationplan import MigrationPlan
from virtfleet.api.pool import VirtualMachinePool
from virtfleet.api.vmtemplate import VMTemplate

CATEGORY = "virtfleet"

JSON = dict[str, Any]


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0

    def render(self) -> JSON:
        column: JSON = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class Kind:
    """Everything the CRD of one kind needs beyond its schema."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    description: str
    columns: tuple[PrinterColumn, ...] = ()
    scale: bool = False
    extra_categories: tuple[str, ...] = field(default=())
    # Names end up in label values (63 characters at most), so some kinds need shorter names.
    name_max: int | None = None
    name_why: str = ""

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_READY = PrinterColumn(
    "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition status"
)
_REASON = PrinterColumn(
    "Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why Ready has its status", 1
)
_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation")

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="VMTemplate",
        plural="vmtemplates",
        singular="vmtemplate",
        short_names=("vftemplate", "vftpl"),
        model=VMTemplate,
        name_max=63,
        name_why="it is the value of the virtfleet.io/template label on every VM",
        description="A reusable, versioned virtual machine definition for virtfleet pools.",
        columns=(
            PrinterColumn("vCPUs", "integer", ".status.vcpus", "vCPUs per VM"),
            PrinterColumn("CPU", "string", ".spec.cpu.policy", "CPU policy: shared or dedicated"),
            PrinterColumn("Memory", "string", ".spec.memory.guest", "Guest memory"),
            _READY,
            _REASON,
            _AGE,
        ),
    ),
    Kind(
        kind="VirtualMachinePool",
        plural="virtualmachinepools",
        singular="virtualmachinepool",
        short_names=("vfpool",),
        model=VirtualMachinePool,
        name_max=57,
        name_why="VMs are named <pool>-<ordinal> and KubeVirt puts VM names in label values (63 at most)",
        description="A set of KubeVirt VirtualMachines built from one VMTemplate revision, with "
        "per-pool CPU and memory oversubscription.",
        columns=(
            PrinterColumn("Desired", "integer", ".spec.replicas", "Desired VMs"),
            PrinterColumn("Ready", "integer", ".status.readyReplicas", "Ready VMs"),
            PrinterColumn("Pending", "integer", ".status.pendingReplicas", "VMs waiting for capacity"),
            PrinterColumn("CPU Ratio", "number", ".status.cpuRatio", "CPU oversubscription in force"),
            PrinterColumn(
                "Eff. CPU",
                "number",
                ".status.oversubscription.effectiveCpuRatio",
                "Effective CPU ratio of the pool's eligible nodes",
                1,
            ),
            PrinterColumn(
                "Revision", "string", ".status.currentRevision", "Template revision most VMs run", 1
            ),
            PrinterColumn("Template", "string", ".spec.templateRef.name", "VMTemplate", 1),
            _AGE,
        ),
        scale=True,
    ),
    Kind(
        kind="MigrationPlan",
        plural="migrationplans",
        singular="migrationplan",
        short_names=("vfplan",),
        model=MigrationPlan,
        description="A batch of live or cold migrations of virtfleet-managed VMs, run in waves under limits.",
        columns=(
            PrinterColumn("Goal", "string", ".spec.goal", "drain, move or rebalance"),
            PrinterColumn("Phase", "string", ".status.phase", "Where the plan is"),
            PrinterColumn("Progress", "string", ".status.progress", "VMs moved / VMs in the plan"),
            PrinterColumn("Failed", "integer", ".status.failed", "VMs that failed to move"),
            PrinterColumn(
                "Remaining", "number", ".status.estimatedRemainingSeconds", "Estimated seconds left"
            ),
            PrinterColumn(
                "Estimate", "number", ".status.estimatedMakespanSeconds", "Estimated seconds for the plan", 1
            ),
            _AGE,
        ),
    ),
)


class SchemaError(ValueError):
    """A model cannot be expressed as a structural Kubernetes schema."""


def openapi_schema(model: type[BaseModel]) -> JSON:
    """The structural OpenAPI v3 schema of a model, every $ref inlined and every field described."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: JSON = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(node: JSON, defs: JSON) -> JSON:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = dict(defs[ref.rsplit("/", 1)[-1]])
    # A field's own description and default win over the referenced model's.
    for key in ("description", "default"):
        if key in node:
            target[key] = node[key]
    return target


def _convert(node: JSON, defs: JSON, path: str) -> JSON:
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] are not structural")
        merged = {**_resolve(options[0], defs), **{k: v for k, v in node.items() if k != "anyOf"}}
        if merged.get("default", 0) is None:
            del merged["default"]
        node = merged
    out: JSON = {}
    for key, value in node.items():
        if key in ("title", "$ref"):
            continue
        if key == "properties":
            out["properties"] = {name: _convert(prop, defs, f"{path}.{name}") for name, prop in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            # `false` (extra="forbid") is implied: the API server prunes, or with strict field
            # validation rejects, unknown fields; structural schemas forbid it beside properties.
            if isinstance(value, dict):
                out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
        elif key == "propertyNames":
            # Kubernetes schemas cannot constrain map keys (a CEL rule on the map does, where needed);
            # the value constraints still apply.
            continue
        elif key == "patternProperties":
            # pydantic's form of a map with constrained keys; structural schemas know only
            # additionalProperties, so the key pattern goes (as for propertyNames) and the values stay.
            (values,) = value.values()
            out["additionalProperties"] = _convert(values, defs, f"{path}{{}}")
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "type" not in out:
        raise SchemaError(f"{path}: no type in {node}")
    return out


def crd(kind: Kind) -> JSON:
    """The full apiextensions.k8s.io/v1 CustomResourceDefinition for one kind."""
    schema = openapi_schema(kind.model)
    schema["description"] = kind.description
    schema["properties"] = {
        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
        "kind": {"type": "string", "description": "Kind of this object."},
        # The API server owns metadata's schema and rejects anything but its type here.
        "metadata": {"type": "object"},
        **schema["properties"],
    }
    # kstatus (Argo CD, Flux) reads a missing status as Current: default observedGeneration to 0, so a
    # new object is InProgress until the operator has reconciled its generation.
    schema["properties"]["status"]["default"] = {"observedGeneration": 0}
    if kind.name_max is not None:
        schema["x-kubernetes-validations"] = [
            {
                "rule": f"size(self.metadata.name) <= {kind.name_max}",
                # No fieldPath: it may not point into metadata, whose schema the API server owns.
                "message": f"metadata.name must be at most {kind.name_max} characters: {kind.name_why}",
            }
        ]
    subresources: JSON = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.labelSelector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {"app.kubernetes.io/part-of": "virtfleet"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY, *kind.extra_categories],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": [c.render() for c in kind.columns],
                }
            ],
        },
    }


def all_crds() -> dict[str, JSON]:
    """File name -> CRD, for every kind."""
    return {f"{GROUP}_{k.plural}.yaml": crd(k) for k in KINDS}


def undescribed_fields(schema: JSON, path: str = "") -> list[str]:
    """Paths of schema properties without a description (they would be blank in kubectl explain)."""
    missing: list[str] = []
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        if here == ".metadata":
            continue
        if not prop.get("description"):
            missing.append(here)
        missing += undescribed_fields(prop, here)
        if "items" in prop:
            missing += undescribed_fields(prop["items"], f"{here}[]")
    return missing
