"""A stand-in for virtfleet.kube.client.Kube that fails on any call a test did not allow, as KubeVirt's
pool tests do: a reconcile test then proves what was written, and what was NOT."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from virtfleet.kube.client import Conflict, NotFound, ResourceRef
from virtfleet.kube.runtime import Runtime
from virtfleet.settings import Settings

Call = tuple[str, str, str]  # (verb, plural, namespace/name)


class FakeKube:
    """Answers the (verb, plural) pairs in `allowed`, keeps the objects it was given or wrote, and
    records every call in order."""

    def __init__(
        self, *allowed: tuple[str, ResourceRef], objects: Mapping[Call, dict[str, Any]] | None = None
    ):
        self.allowed = {(verb, ref.plural) for verb, ref in allowed}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {
            (plural, key): dict(body) for (_, plural, key), body in (objects or {}).items()
        }
        self.calls: list[Call] = []
        self.bodies: list[dict[str, Any]] = []

    def _call(self, verb: str, ref: ResourceRef, namespace: str | None, name: str, body: Any = None) -> str:
        key = f"{namespace or ''}/{name}"
        if (verb, ref.plural) not in self.allowed:
            raise AssertionError(f"unexpected {verb} {ref.plural} {key}: {body}")
        self.calls.append((verb, ref.plural, key))
        self.bodies.append(dict(body or {}))
        return key

    def writes(self, verb: str, plural: str) -> list[str]:
        return [key for v, p, key in self.calls if (v, p) == (verb, plural)]

    async def create(
        self, ref: ResourceRef, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        key = self._call("create", ref, namespace, body["metadata"]["name"], body)
        if (ref.plural, key) in self.objects:
            raise Conflict(status=409, reason="AlreadyExists")
        self.objects[ref.plural, key] = dict(body)
        return dict(body)

    async def get(self, ref: ResourceRef, namespace: str | None, name: str) -> dict[str, Any]:
        key = self._call("get", ref, namespace, name)
        if (ref.plural, key) not in self.objects:
            raise NotFound(status=404, reason="NotFound")
        return self.objects[ref.plural, key]

    async def list(
        self, ref: ResourceRef, namespace: str | None = None, label_selector: str | None = None
    ) -> dict[str, Any]:
        self._call("list", ref, namespace, "", {"labelSelector": label_selector})
        return {"items": [o for (plural, _), o in self.objects.items() if plural == ref.plural]}

    async def patch(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        key = self._call("patch" + (f"/{subresource}" if subresource else ""), ref, namespace, name, body)
        current = self.objects.setdefault((ref.plural, key), {"metadata": {"name": name}})
        for field, value in body.items():
            if isinstance(value, Mapping) and isinstance(current.get(field), Mapping):
                current[field] = {**current[field], **value}
            else:
                current[field] = value
        return current

    async def apply(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
        force: bool = True,
    ) -> dict[str, Any]:
        key = self._call("apply", ref, namespace, name, body)
        self.objects[ref.plural, key] = dict(body)
        return dict(body)

    async def delete(
        self, ref: ResourceRef, namespace: str | None, name: str, *, uid: str | None = None
    ) -> dict[str, Any]:
        key = self._call("delete", ref, namespace, name)
        if self.objects.pop((ref.plural, key), None) is None:
            raise NotFound(status=404, reason="NotFound")
        return {}


def runtime_with(kube: FakeKube, **settings: Any) -> Runtime:
    return Runtime(kube, Settings(**settings))  # type: ignore[arg-type]
