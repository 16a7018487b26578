"""Validation that admission cannot do, with every problem naming its field.

The CRD schema and its CEL rules reject most bad input at admission. These checks cover what CEL cannot
express (quantity arithmetic) and re-check everything for objects stored before a rule existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from virtfleet.api.quantity import parse_bytes
from virtfleet.api.vmtemplate import CLOUD_INIT_DISK, VMTemplateSpec

M = TypeVar("M", bound=BaseModel)

HUGEPAGE_BYTES = {"2Mi": 2 * 2**20, "1Gi": 2**30}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _loc_to_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_model(
    model: type[M], data: Mapping[str, Any] | None, prefix: str
) -> tuple[M | None, list[Problem]]:
    """Parse `data` into `model`; on failure, one Problem per invalid field, paths in wire names."""
    try:
        return model.model_validate(dict(data or {})), []
    except ValidationError as error:
        problems = [
            Problem(_loc_to_path(prefix, tuple(e["loc"])), e["msg"]) for e in error.errors(include_url=False)
        ]
        return None, problems


def validate_template(data: Mapping[str, Any] | None) -> tuple[VMTemplateSpec | None, list[Problem]]:
    """The parsed spec, and every problem found in it (none means valid)."""
    spec, problems = parse_model(VMTemplateSpec, data, "spec")
    if spec is None:
        return None, problems
    return spec, _semantic_problems(spec)


def _semantic_problems(spec: VMTemplateSpec) -> list[Problem]:
    problems: list[Problem] = []
    # The model's Quantity type has parsed every quantity and bounded it to (0, 1Pi] already.
    guest = parse_bytes(spec.memory.guest)
    if spec.memory.hugepages:
        page = HUGEPAGE_BYTES[spec.memory.hugepages]
        if guest % page:
            problems.append(
                Problem(
                    "spec.memory.guest",
                    f"{spec.memory.guest} is not a whole number of {spec.memory.hugepages} hugepages",
                )
            )
    if spec.memory.max_guest is not None and parse_bytes(spec.memory.max_guest) < guest:
        problems.append(Problem("spec.memory.maxGuest", f"{spec.memory.max_guest} is less than memory.guest"))
    boot_orders: dict[int, str] = {}
    for index, disk in enumerate(spec.disks):
        where = f"spec.disks[{index}]"
        if disk.size is None and disk.source.container_image is None:
            problems.append(Problem(f"{where}.size", f"disk {disk.name!r} needs a size for its source"))
        if disk.boot_order is not None:
            if disk.boot_order in boot_orders:
                problems.append(
                    Problem(
                        f"{where}.bootOrder",
                        f"{disk.boot_order} is already used by disk {boot_orders[disk.boot_order]!r}",
                    )
                )
            boot_orders[disk.boot_order] = disk.name
    # Admission's CEL rule says the same; checked here too for objects stored before it, or on clusters
    # that skip CEL.
    if spec.cloud_init is not None:
        for index, disk in enumerate(spec.disks):
            if disk.name == CLOUD_INIT_DISK:
                problems.append(
                    Problem(
                        f"spec.disks[{index}].name", f"{CLOUD_INIT_DISK!r} is taken by the cloud-init disk"
                    )
                )
    nat = [i.name for i in spec.interfaces if i.type == "nat"]
    if len(nat) > 1:
        problems.append(Problem("spec.interfaces", f"at most one interface may be nat, not {', '.join(nat)}"))
    return problems
