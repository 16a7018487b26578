"""Operator-wide kopf configuration, applied once at start-up."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from virtfleet import metrics
from virtfleet.kube.client import Kube
from virtfleet.kube.runtime import Runtime
from virtfleet.settings import Settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
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
    metrics.serve(config.metrics_port)
    memo["runtime"] = Runtime(await Kube.connect(field_manager=config.field_manager, pool_size=64), config)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the API client's connections."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.kube.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, else the kubeconfig that KUBECONFIG names when we start.

    kopf's own loaders read the environment at call time (kubernetes_asyncio's fix it at import).
    """
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)
