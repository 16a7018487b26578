"""Validation that admission cannot do, with every problem naming its field.

The CRD schema and its CEL rules reject most bad input at admission. These checks cover what CEL cannot
express (quantity arithmetic) and re-check everything for objects stored before a rule existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from virtfleet.api.quantity import QuantityError, parse_bytes
from virtfleet.api.vmtemplate import CLOUD_INIT_DISK, VMTemplateSpec

M = TypeVar("M", bound=BaseModel)

HUGEPAGE_BYTES = {"2Mi": 2 * 2**20, "1Gi": 2**30}
MAX_GUEST = 2**50


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
    guest = _bytes(spec.memory.guest, "spec.memory.guest", problems)
    if guest is not None and guest <= 0:
        problems.append(Problem("spec.memory.guest", "must be greater than zero"))
    if guest is not None and guest > MAX_GUEST:
        problems.append(Problem("spec.memory.guest", "must be at most 1Pi"))
    if guest is not None and spec.memory.hugepages:
        page = HUGEPAGE_BYTES[spec.memory.hugepages]
        if guest % page:
            problems.append(
                Problem(
                    "spec.memory.guest",
                    f"{spec.memory.guest} is not a whole number of {spec.memory.hugepages} hugepages",
                )
            )
    if spec.memory.max_guest is not None:
        ceiling = _bytes(spec.memory.max_guest, "spec.memory.maxGuest", problems)
        if guest is not None and ceiling is not None and ceiling < guest:
            problems.append(
                Problem("spec.memory.maxGuest", f"{spec.memory.max_guest} is less than memory.guest")
            )
    boot_orders: dict[int, str] = {}
    for index, disk in enumerate(spec.disks):
        where = f"spec.disks[{index}]"
        if disk.size is None and disk.source.container_image is None:
            problems.append(Problem(f"{where}.size", f"disk {disk.name!r} needs a size for its source"))
        elif disk.size is not None:
            size = _bytes(disk.size, f"{where}.size", problems)
            if size is not None and size <= 0:
                problems.append(Problem(f"{where}.size", "must be greater than zero"))
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


def _bytes(text: str, field: str, problems: list[Problem]) -> int | None:
    try:
        return parse_bytes(text)
    except QuantityError as error:
        problems.append(Problem(field, str(error)))
        return None
