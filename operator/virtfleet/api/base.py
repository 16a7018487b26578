"""Shared building blocks of every virtfleet resource model."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints
from pydantic.alias_generators import to_camel

# Kubernetes resource.Quantity in its canonical string forms ("4Gi", "1500m", "2", "1e3").
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, min_length=1, max_length=64)]
# RFC 1123 label: what Kubernetes accepts for names of disks, interfaces and most objects.
DNSLabel = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=63)
]
# RFC 1123 subdomain: object names such as Secrets, PVCs and NetworkAttachmentDefinitions.
ObjectName = Annotated[
    str,
    StringConstraints(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        min_length=1,
        max_length=253,
    ),
]


LabelMap = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=317)], Annotated[str, StringConstraints(max_length=1024)]
    ],
    Field(max_length=64),
]


class Model(BaseModel):
    """Base of every model: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )


class Condition(Model):
    """A Kubernetes-style condition (kstatus conventions)."""

    type: str = Field(max_length=64, description="Condition type, e.g. Ready, Progressing, Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        max_length=128,
        description="One CamelCase word that says why the condition has its status.",
    )
    message: str = Field(default="", max_length=4096, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        description="Current state, in kstatus style: Ready, Progressing, Degraded and kind-specific types.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class BaseStatus(Model):
    """Status fields every virtfleet kind carries."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the operator last acted on."
    )
    conditions: Conditions


def cel(*rules: dict[str, str]) -> ConfigDict:
    """Model config carrying CEL admission rules (x-kubernetes-validations) into the generated CRD."""
    validations: list[JsonValue] = [dict(rule) for rule in rules]
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": validations})
