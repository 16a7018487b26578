"""Operator settings: one object, filled from flags and VIRTFLEET_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """A setting has a value the operator cannot use; the message names the setting."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as error:
        raise SettingsError(f"{name}={raw!r} is not a number") from error
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything that tunes the operator; defaults are what a production install wants."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # true: no kopf peering (one replica, the Helm chart's default). Peering is opt-in (--peering NAME or
    # VIRTFLEET_PEERING_NAME): it needs kopf's peering CRDs and object, and without them kopf would pause.
    standalone: bool = True
    peering_name: str = "virtfleet"
    # kopf runs the peer of highest priority and pauses the others; equal priorities pause everyone.
    # None: derived from the start time (priority_at), so the replica that started first leads
    # and a replacement pod waits as the standby instead of taking over.
    peering_priority: int | None = None
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    metrics_port: int = 9090  # 0: no metrics endpoint
    default_cpu_ratio: float = 1.0
    default_memory_ratio: float = 1.0
    # KubeVirt's cluster-wide cpuAllocationRatio: what a VMI without CPU requests asks per vCPU.
    kubevirt_cpu_allocation_ratio: float = 10.0
    # KubeVirt's migration limits (its KubeVirt CR, spec.configuration.migrations): plans never queue
    # more migrations than KubeVirt runs at once, so their limits and estimates hold.
    kubevirt_parallel_migrations: int = 5
    kubevirt_parallel_outbound_per_node: int = 2
    field_manager: str = "virtfleet"
    verbose: bool = False
    annotations_prefix: str = "virtfleet.io"

    def priority_at(self, started_epoch_ms: int) -> int:
        """This replica's peering priority: the set one, else earlier start = higher priority."""
        if self.peering_priority is not None:
            return self.peering_priority
        return 10**13 - started_epoch_ms

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read VIRTFLEET_* variables; explicit overrides (from flags) win over the environment."""
        env = os.environ if env is None else env
        namespaces = tuple(n for n in env.get("VIRTFLEET_NAMESPACES", "").replace(",", " ").split() if n)
        values: dict[str, object] = {
            "namespaces": namespaces,
            "standalone": not env.get("VIRTFLEET_PEERING_NAME")
            and env.get("VIRTFLEET_STANDALONE", "true").lower() in ("1", "true", "yes"),
            "verbose": env.get("VIRTFLEET_VERBOSE", "").lower() in ("1", "true", "yes"),
            "peering_name": env.get("VIRTFLEET_PEERING_NAME", cls.peering_name),
            "liveness_endpoint": env.get("VIRTFLEET_LIVENESS_ENDPOINT", cls.liveness_endpoint),
            "default_cpu_ratio": _float(env, "VIRTFLEET_DEFAULT_CPU_RATIO", cls.default_cpu_ratio, 1.0),
            "default_memory_ratio": _float(
                env, "VIRTFLEET_DEFAULT_MEMORY_RATIO", cls.default_memory_ratio, 1.0
            ),
            "kubevirt_cpu_allocation_ratio": _float(
                env, "VIRTFLEET_KUBEVIRT_CPU_ALLOCATION_RATIO", cls.kubevirt_cpu_allocation_ratio, 1.0
            ),
        }
        for key, name in (
            ("kubevirt_parallel_migrations", "VIRTFLEET_KUBEVIRT_PARALLEL_MIGRATIONS"),
            ("kubevirt_parallel_outbound_per_node", "VIRTFLEET_KUBEVIRT_PARALLEL_OUTBOUND_PER_NODE"),
        ):
            raw = env.get(name)
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise SettingsError(f"{name}={raw!r} must be a whole number of at least 1")
                values[key] = int(raw)
        port = env.get("VIRTFLEET_METRICS_PORT")
        if port:
            if not port.isdigit() or not 0 <= int(port) < 65536:
                raise SettingsError(f"VIRTFLEET_METRICS_PORT={port!r} is not a TCP port (0 disables metrics)")
            values["metrics_port"] = int(port)
        priority = env.get("VIRTFLEET_PEERING_PRIORITY")
        if priority:
            try:
                values["peering_priority"] = int(priority)
            except ValueError as error:
                raise SettingsError(
                    f"VIRTFLEET_PEERING_PRIORITY={priority!r} is not a whole number"
                ) from error
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("peering_name") and overrides.get("standalone") is None:
            values["standalone"] = False  # naming a peering asks for it
        return cls(**values)  # type: ignore[arg-type]
