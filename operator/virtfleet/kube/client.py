"""Async Kubernetes access for virtfleet, built on kubernetes_asyncio.

Every write of a kubevirt.io (or any other) object goes through here with fieldValidation=Strict, so a
misspelled field fails loudly instead of being pruned by the API server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

STRICT = "Strict"

__all__ = ["ApiException", "Kube", "ResourceRef"]


@dataclass(frozen=True)
class ResourceRef:
    """A namespaced custom resource type."""

    group: str
    version: str
    plural: str


VIRTUAL_MACHINES = ResourceRef("kubevirt.io", "v1", "virtualmachines")


class Kube:
    """A thin async client; open with `async with Kube.connect(...) as kube:`."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self.field_manager = field_manager

    @classmethod
    async def connect(cls, field_manager: str = "virtfleet", kubeconfig: str | None = None) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
        configuration = client.Configuration()
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            # kubernetes_asyncio reads KUBECONFIG once, at import; read it now instead.
            path = kubeconfig or os.environ.get("KUBECONFIG")
            await config.load_kube_config(config_file=path, client_configuration=configuration)
        return cls(client.ApiClient(configuration), field_manager)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def create(self, ref: ResourceRef, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a custom object; unknown or duplicate fields are rejected by the API server."""
        created: dict[str, Any] = await self._custom.create_namespaced_custom_object(
            ref.group,
            ref.version,
            namespace,
            ref.plural,
            dict(body),
            field_manager=self.field_manager,
            field_validation=STRICT,
        )
        return created

    async def get(self, ref: ResourceRef, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._custom.get_namespaced_custom_object(
            ref.group, ref.version, namespace, ref.plural, name
        )
        return found
