"""Async Kubernetes access for virtfleet, built on kubernetes_asyncio.

Every write goes through here with fieldValidation=Strict, so a misspelled field fails loudly instead of
being pruned by the API server. Objects travel as plain dicts: virtfleet's own models parse them where
needed, and large lists skip the generated client's per-field deserialisation.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

STRICT = "Strict"
THROTTLE_RETRIES = 10
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

__all__ = [
    "MERGE_PATCH",
    "ApiException",
    "Conflict",
    "Kube",
    "NotFound",
    "ResourceRef",
    "namespace_terminating",
]

JSON = dict[str, Any]


@dataclass(frozen=True)
class ResourceRef:
    """A resource type: group ("" for the core group), version, plural, scope."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def gvr(self) -> tuple[str, str, str]:
        """(group, version, plural): what kopf's decorators take, so handlers name no resource twice."""
        return self.group, self.version, self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


NODES = ResourceRef("", "v1", "nodes", namespaced=False)
NAMESPACES = ResourceRef("", "v1", "namespaces", namespaced=False)
PODS = ResourceRef("", "v1", "pods")
EVENTS = ResourceRef("", "v1", "events")
CONTROLLER_REVISIONS = ResourceRef("apps", "v1", "controllerrevisions")
VIRTUAL_MACHINE_POOLS = ResourceRef("virtfleet.io", "v1alpha1", "virtualmachinepools")
VM_TEMPLATES = ResourceRef("virtfleet.io", "v1alpha1", "vmtemplates")
MIGRATION_PLANS = ResourceRef("virtfleet.io", "v1alpha1", "migrationplans")
VIRTUAL_MACHINES = ResourceRef("kubevirt.io", "v1", "virtualmachines")
VIRTUAL_MACHINE_INSTANCES = ResourceRef("kubevirt.io", "v1", "virtualmachineinstances")
MIGRATIONS = ResourceRef("kubevirt.io", "v1", "virtualmachineinstancemigrations")
MIGRATION_POLICIES = ResourceRef("migrations.kubevirt.io", "v1alpha1", "migrationpolicies", namespaced=False)


class NotFound(ApiException):
    """404: the object is gone (or never was)."""


class Conflict(ApiException):
    """409: it exists already, or it changed since it was read (a resourceVersion or uid precondition)."""


def _typed(error: ApiException) -> ApiException:
    """The API server's refusal as NotFound or Conflict where it is one, so callers catch a type instead
    of checking status codes; both stay ApiExceptions."""
    kind = {404: NotFound, 409: Conflict}.get(int(error.status or 0))
    if kind is None:
        return error
    typed: ApiException = kind(status=error.status, reason=error.reason)
    typed.body, typed.headers = error.body, error.headers
    return typed


_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _retry_after(error: ApiException) -> float:
    headers: Mapping[str, str] = error.headers or {}
    try:
        return min(10.0, max(0.1, float(headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def namespace_terminating(error: ApiException) -> bool:
    """The API server refused to create something because its namespace is being deleted: nothing
    to do there any more, not a failure worth a traceback or a retry."""
    if error.status != 403:
        return False
    try:
        causes = json.loads(error.body or "{}").get("details", {}).get("causes", [])
    except (ValueError, AttributeError):
        return False
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes)


class Kube:
    """A thin async client; `kube = await Kube.connect()`, then `async with kube:`."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self._api = api
        self.field_manager = field_manager
        # Called with (verb, HTTP code) after every request: the operator counts them in a metric.
        self.on_response: Callable[[str, int], None] | None = None

    @classmethod
    async def connect(
        cls, field_manager: str = "virtfleet", kubeconfig: str | None = None, pool_size: int = 32
    ) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
        configuration = client.Configuration()
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            # kubernetes_asyncio reads KUBECONFIG once, at import; read it now instead.
            path = kubeconfig or os.environ.get("KUBECONFIG")
            await config.load_kube_config(config_file=path, client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration), field_manager)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- raw requests --------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> JSON:
        verb = _VERBS.get(method, method.lower()) if content_type != APPLY_PATCH else "apply"
        for attempt in range(THROTTLE_RETRIES + 1):
            try:
                result, code, _ = await self._api.call_api(
                    path,
                    method,
                    query_params=list((query or {}).items()),
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body,
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=False,
                )
                if self.on_response is not None:
                    self.on_response(verb, int(code))
                data: JSON = result
                return data
            except ApiException as error:
                if self.on_response is not None:
                    self.on_response(verb, int(error.status or 0))
                # 429 (API priority and fairness, storage initialising) says when to come back, as
                # client-go honours it; everything else is the caller's to handle.
                if error.status != 429 or attempt == THROTTLE_RETRIES:
                    raise _typed(error) from error
                await asyncio.sleep(_retry_after(error))
        raise AssertionError("unreachable")

    def _write_query(self, dry_run: bool = False) -> dict[str, str | int]:
        query: dict[str, str | int] = {"fieldManager": self.field_manager, "fieldValidation": STRICT}
        if dry_run:
            query["dryRun"] = "All"
        return query

    # -- verbs ---------------------------------------------------------------------------------------

    async def create(self, ref: ResourceRef, namespace: str | None, body: Mapping[str, Any]) -> JSON:
        """Create an object; unknown or duplicate fields are rejected by the API server."""
        return await self.request("POST", ref.path(namespace), query=self._write_query(), body=dict(body))

    async def get(self, ref: ResourceRef, namespace: str | None, name: str) -> JSON:
        return await self.request("GET", ref.path(namespace, name))

    async def list(
        self, ref: ResourceRef, namespace: str | None = None, label_selector: str | None = None
    ) -> JSON:
        query: dict[str, str | int] = {"labelSelector": label_selector} if label_selector else {}
        return await self.request("GET", ref.path(namespace), query=query)

    async def patch(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
    ) -> JSON:
        """JSON merge patch (RFC 7386), strict."""
        return await self.request(
            "PATCH",
            ref.path(namespace, name, subresource),
            query=self._write_query(),
            body=dict(body),
            content_type=MERGE_PATCH,
        )

    async def apply(
        self,
        ref: ResourceRef,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str = "",
        force: bool = True,
    ) -> JSON:
        """Server-side apply as this client's field manager, strict."""
        query = self._write_query()
        if force:
            query["force"] = "true"
        return await self.request(
            "PATCH",
            ref.path(namespace, name, subresource),
            query=query,
            body=dict(body),  # JSON is YAML; the client serialises it
            content_type=APPLY_PATCH,
        )

    async def delete(
        self, ref: ResourceRef, namespace: str | None, name: str, *, uid: str | None = None
    ) -> JSON:
        body: JSON = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        return await self.request("DELETE", ref.path(namespace, name), body=body)

    async def watch(
        self,
        ref: ResourceRef,
        resource_version: str,
        namespace: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JSON]:
        """Watch events from `resource_version` until the server ends the stream."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        response = await self._api.call_api(
            ref.path(namespace),
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout_seconds + 30,
        )
        async with response:
            async for line in response.content:
                if line.strip():
                    event: JSON = json.loads(line)
                    yield event
