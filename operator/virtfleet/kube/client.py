"""Async Kubernetes access for virtfleet: plain HTTP on aiohttp (which kopf already runs on).

Every write goes through here with fieldValidation=Strict, so a misspelled field fails loudly instead of
being pruned by the API server. Objects travel as plain dicts: virtfleet's own models parse them where
needed. No generated client: kubernetes_asyncio cost about 37 MiB of the operator's memory (kopf imports it
whenever it is installed) for the one generic call this module made of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from virtfleet.kube.credentials import Credentials, load

STRICT = "Strict"
THROTTLE_RETRIES = 10
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

__all__ = [
    "MERGE_PATCH",
    "ApiError",
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


class ApiError(Exception):
    """The API server refused a request: its HTTP status, reason phrase, body (a Status object, as text)
    and headers."""

    def __init__(
        self, status: int = 0, reason: str = "", body: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status, reason)
        self.status, self.reason, self.body = status, reason, body
        self.headers: Mapping[str, str] = headers or {}

    def __str__(self) -> str:
        message = ""
        try:
            message = str(json.loads(self.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            message = (self.body or "")[:500]
        return f"({self.status}) {self.reason}" + (f": {message}" if message else "")


class NotFound(ApiError):  # noqa: N818 - reads as the condition it is: `except NotFound`
    """404: the object is gone (or never was)."""


class Conflict(ApiError):  # noqa: N818
    """409: it exists already, or it changed since it was read (a resourceVersion or uid precondition)."""


def _typed(error: ApiError) -> ApiError:
    """The API server's refusal as NotFound or Conflict where it is one, so callers catch a type instead
    of checking status codes; both stay ApiExceptions."""
    kind = {404: NotFound, 409: Conflict}.get(int(error.status or 0))
    if kind is None:
        return error
    return kind(error.status, error.reason, error.body, error.headers)


_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _retry_after(error: ApiError) -> float:
    headers: Mapping[str, str] = error.headers or {}
    try:
        return min(10.0, max(0.1, float(headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def namespace_terminating(error: ApiError) -> bool:
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

    def __init__(
        self, credentials: Credentials, field_manager: str, pool_size: int = 32, read_timeout_s: float = 300
    ) -> None:
        self.credentials = credentials
        self.field_manager = field_manager
        self._pool_size = pool_size
        # No deadline for a whole request: a deletecollection or a list of 10,000 VMs on a busy API server
        # may take minutes. A connection that stays silent for read_timeout_s is given up on.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # Called with (verb, HTTP code) after every request: the operator counts them in a metric.
        self.on_response: Callable[[str, int], None] | None = None

    @classmethod
    async def connect(
        cls, field_manager: str = "virtfleet", kubeconfig: str | None = None, pool_size: int = 32
    ) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
        return cls(load(kubeconfig), field_manager, pool_size)

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop; objects of a watch line can exceed aiohttp's 64 KiB.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, read_bufsize=2**22)
        return self._session

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        authorization = self.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
        data = None if body is None else json.dumps(body)  # JSON is YAML too, for server-side apply
        for attempt in range(THROTTLE_RETRIES + 1):
            async with self._http().request(
                method,
                self.credentials.server + path,
                params=[(k, str(v)) for k, v in (query or {}).items()],
                data=data,
                headers=self._headers(content_type if data is not None else None),
                timeout=self._timeout,
            ) as response:
                # Bytes straight to json: a list of 10,000 VMs is tens of MB, better not held twice.
                content = await response.read()
                if self.on_response is not None:
                    self.on_response(verb, response.status)
                if response.status < 400:
                    result: JSON = json.loads(content) if content else {}
                    return result
                text = content.decode(errors="replace")
                error = ApiError(response.status, response.reason or "", text, dict(response.headers))
            # 429 (API priority and fairness, storage initialising) says when to come back, as client-go
            # honours it; everything else is the caller's to handle.
            if error.status != 429 or attempt == THROTTLE_RETRIES:
                raise _typed(error)
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
        label_selector: str = "",
    ) -> AsyncIterator[JSON]:
        """Watch events from `resource_version` until the server ends the stream."""
        query: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        async with self._http().get(
            self.credentials.server + ref.path(namespace),
            params=[(k, str(v)) for k, v in query.items()],
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_connect=30),
        ) as response:
            if self.on_response is not None:
                self.on_response("watch", response.status)
            if response.status >= 400:
                raise _typed(
                    ApiError(
                        response.status, response.reason or "", await response.text(), dict(response.headers)
                    )
                )
            async for line in response.content:
                if line.strip():
                    event: JSON = json.loads(line)
                    yield event
