"""Operator-wide kopf configuration, applied once at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from virtfleet import metrics
from virtfleet.core.capacity import with_other_pods
from virtfleet.handlers.indexes import (
    NOT_LAUNCHERS,
    POD_INDEXERS,
    VM_INDEXERS,
    pods_changed,
    vmi_indexers,
    vmis_changed,
    vms_changed,
)
from virtfleet.kube import credentials
from virtfleet.kube.client import PODS, VIRTUAL_MACHINE_INSTANCES, VIRTUAL_MACHINES, Kube
from virtfleet.kube.discovery import discover_kubevirt
from virtfleet.kube.informer import Informer
from virtfleet.kube.runtime import Runtime
from virtfleet.settings import Settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **indexes: Any) -> None:
    """Keep kopf's bookkeeping in virtfleet.io annotations and out of our structural status."""
    config: Settings = memo.get("settings") or Settings.from_env()
    memo["settings"] = config
    prefix = config.annotations_prefix
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{prefix}/finalizer"
    # Events are for people: only the ones handlers post on purpose, and warnings.
    settings.posting.level = logging.WARNING
    # Thousands of VMs mean thousands of index and wake-up calls: log only what goes wrong.
    if not config.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    kube = await Kube.connect(field_manager=config.field_manager, pool_size=64)
    kube.on_response = lambda verb, code: metrics.API_REQUESTS.labels(verb, str(code)).inc()
    kubevirt = await discover_kubevirt(kube)
    metrics.KUBEVIRT_INFO.labels(kubevirt.version, str(kubevirt.max_downtime_supported).lower()).set(1)
    runtime = Runtime(kube, config, kubevirt=kubevirt)
    runtime.vms = Informer(
        kube, VIRTUAL_MACHINES, VM_INDEXERS, lambda changed: vms_changed(runtime, changed), config.namespaces
    )
    runtime.vmis = Informer(
        kube, VIRTUAL_MACHINE_INSTANCES, vmi_indexers(config.kubevirt_cpu_allocation_ratio),
        lambda changed: vmis_changed(runtime, changed), config.namespaces,
    )  # fmt: skip
    runtime.pods = Informer(
        kube, PODS, POD_INDEXERS, lambda changed: pods_changed(runtime, changed), config.namespaces,
        label_selector=NOT_LAUNCHERS,
    )  # fmt: skip
    memo["runtime"] = runtime
    memo["informers"] = [
        asyncio.create_task(informer.run(), name=f"informer:{informer.ref.plural}")
        for informer in (runtime.vms, runtime.vmis, runtime.pods)
    ]
    _register_fleet_metrics(indexes, runtime)
    metrics.serve(config.metrics_port)


def _register_fleet_metrics(indexes: dict[str, Any], runtime: Runtime) -> None:
    """Per-node and per-template series, computed at scrape time from the live indexes."""
    nodes = indexes["nodes"]
    assert runtime.vmis is not None and runtime.pods is not None
    placements = runtime.vmis.indexes["placements"]
    other_pods = cast(Mapping[str, list[tuple[int, int]]], runtime.pods.indexes["other_pods"])
    revisions, pools_by_template = indexes["revisions"], indexes["pools_by_template"]
    metrics.register_fleet(
        metrics.FleetCollector(
            nodes=lambda: with_other_pods(nodes.get(None, ()), other_pods),
            placements=lambda: [(p.requests, p.node) for p in placements.get(None, ())],
            revisions=lambda: [(ns, t, r.digest) for (ns, t), store in revisions.items() for r in store],
            revisions_in_use=lambda: [
                (ns, t, digest)
                for (ns, t), store in pools_by_template.items()
                for _, used in store
                for digest in used
            ],
        )
    )


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Stop the informers; close the API client's connections."""
    for task in memo.get("informers") or []:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.kube.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's client signs in as ours does (virtfleet.kube.credentials): the pod's service account, else the
    kubeconfig KUBECONFIG names when we start. kopf re-runs this when the API server says 401, which also
    picks up a rotated service-account token."""
    found = credentials.load()
    authorization = found.authorization()  # reads a token file, if that is how we sign in
    return kopf.ConnectionInfo(
        server=found.server,
        ca_path=found.ca_path,
        ca_data=found.ca_data,  # kopf takes PEM as it is
        insecure=found.insecure or None,
        scheme="Bearer" if found.token else None,
        token=found.token if authorization else None,
        username=found.username,
        password=found.password,
        certificate_path=found.certificate_path,
        certificate_data=found.certificate_data,
        private_key_path=found.key_path,
        private_key_data=found.key_data,
        default_namespace=found.namespace,
    )
