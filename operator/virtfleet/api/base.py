"""Shared building blocks of every virtfleet resource model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StringConstraints,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic.alias_generators import to_camel

from virtfleet.api.quantity import QuantityError, parse_quantity
from virtfleet.api.timestamps import TimeToSecond

# Kubernetes resource.Quantity as its parser reads it: a decimal, then a binary or decimal suffix or an
# exponent ("4Gi", "1500m", "2", "1e3").
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
QUANTITY_MAX = "1Pi"
_QUANTITY_RULE = {
    "rule": f"isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) && "
    f"!quantity(self).isGreaterThan(quantity('{QUANTITY_MAX}'))",
    "message": f"must be a quantity greater than 0 and at most {QUANTITY_MAX}, e.g. 4Gi",
}
_QUANTITY_CEILING = parse_quantity(QUANTITY_MAX)


def _positive_bounded(text: str) -> str:
    """The same bounds as the CEL rule, so the operator re-checks what admission checks."""
    try:
        value = parse_quantity(text)
    except QuantityError as error:
        raise ValueError(str(error)) from None
    if not 0 < value <= _QUANTITY_CEILING:
        raise ValueError(_QUANTITY_RULE["message"])
    return text


# Any quantity Kubernetes parses, zero included (the twin's node shapes).
AnyQuantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, min_length=1, max_length=64)]
# Memory, disk sizes, bandwidth: a positive quantity no larger than QUANTITY_MAX. The pattern alone
# admits zero, negatives and 1e400; CEL's quantity library (Kubernetes >= 1.29) bounds them at admission.
Quantity = Annotated[
    str,
    StringConstraints(pattern=QUANTITY_PATTERN, min_length=1, max_length=64),
    AfterValidator(_positive_bounded),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": QUANTITY_PATTERN,
            "minLength": 1,
            "maxLength": 64,
            "x-kubernetes-validations": [dict(_QUANTITY_RULE)],
        }
    ),
]
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


# Label and annotation keys: an optional DNS-subdomain prefix and "/", then a name of at most 63
# characters (no backslashes, so the same text is a valid CEL string literal).
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
_KEY = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME, max_length=317)]
# Kubernetes schemas cannot constrain map keys (crd.py drops propertyNames), so CEL checks them.
_KEYS_RULE = {
    "rule": f"self.all(k, k.matches('{QUALIFIED_NAME}'))",
    "message": "keys must be label keys: an optional DNS prefix and '/', then at most 63 characters "
    "of letters, digits, '-', '_' or '.', e.g. example.com/team",
}

LabelMap = Annotated[
    dict[_KEY, Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]],
    Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [dict(_KEYS_RULE)]}),
]
AnnotationMap = Annotated[
    dict[_KEY, Annotated[str, StringConstraints(max_length=1024)]],
    Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [dict(_KEYS_RULE)]}),
]


class Model(BaseModel):
    """Base of every model: camelCase on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )


def _keep_int(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    checked = handler(value)  # the float's checks (ge, le) still apply
    return value if type(value) is int else checked


def _as_is(value: float) -> int | float:  # the int that _keep_int kept, written as one
    return value


# Seconds (a duration, an estimate), a JSON number that stays an int when it is one. JSON has one number
# type, but the text differs: the API server hands back 12 for a 12.0 we wrote, and a whole estimate may
# be computed as an int; a plain float field would write either back as 12.0. The bound sits inside the
# type so the wrapped validator checks it and the schema still says `minimum: 0`.
Seconds = Annotated[float, Field(ge=0), WrapValidator(_keep_int), PlainSerializer(_as_is, when_used="json")]


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
    last_transition_time: TimeToSecond | None = Field(
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
