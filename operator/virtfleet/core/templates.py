"""What a VMTemplate's status should say, computed without I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from virtfleet.api import reasons
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core import conditions
from virtfleet.core.status import differing
from virtfleet.core.validation import Problem, validate_template

_MAX_PROBLEMS_IN_MESSAGE = 10


@dataclass(frozen=True)
class TemplateVerdict:
    problems: list[Problem]
    parsed: VMTemplateSpec | None = None
    # The status fields to write; empty when the stored status already says this.
    status_patch: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        return _summarise(self.problems)


def _summarise(problems: list[Problem]) -> str:
    if not problems:
        return "template is valid"
    shown = "; ".join(str(p) for p in problems[:_MAX_PROBLEMS_IN_MESSAGE])
    hidden = len(problems) - _MAX_PROBLEMS_IN_MESSAGE
    return shown + (f"; and {hidden} more" if hidden > 0 else "")


def evaluate_template(
    spec: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None,
    generation: int | None,
    now: datetime,
) -> TemplateVerdict:
    """Validate a template spec and say which status fields must change to report the result."""
    parsed, problems = validate_template(spec)
    ready = conditions.Desired(
        type=conditions.READY,
        status="False" if problems else "True",
        reason=reasons.INVALID_SPEC if problems else reasons.TEMPLATE_VALID,
        message=_summarise(problems),
    )
    # kstatus: a template that cannot become valid without a spec change is Stalled, never Reconciling.
    stalled = conditions.Desired(
        type=conditions.STALLED,
        status="True" if problems else "False",
        reason=reasons.INVALID_SPEC if problems else reasons.TEMPLATE_VALID,
        message=_summarise(problems) if problems else "",
    )
    current = dict(status or {})
    merged = conditions.merge(current.get("conditions"), [ready, stalled], generation, now)
    vcpus = parsed.cpu.vcpus if parsed is not None and not problems else None
    desired: dict[str, Any] = {"conditions": merged, "vcpus": vcpus}  # vcpus None removes it
    if generation is not None:
        desired["observedGeneration"] = generation
    return TemplateVerdict(problems=problems, parsed=parsed, status_patch=differing(desired, current))
