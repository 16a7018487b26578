"""A real Prometheus scrapes the in-cluster operator with the chart's settings and loads its alerts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kind_helpers import CAPACITY_NAMESPACE, Operator, Prometheus, record, wait_for

from virtfleet.localcluster.testing import SessionCluster


def test_prometheus_scrapes_the_operator_through_the_charts_service(
    test_cluster: SessionCluster, operator: Operator, prometheus: Prometheus
) -> None:
    def up() -> list[dict[str, Any]] | None:
        result: list[dict[str, Any]] = prometheus.api("query", query='up{container="virtfleet"} == 1')[
            "result"
        ]
        return result or None

    (target,) = wait_for(up, 120, "Prometheus never scraped the operator")
    assert target["metric"]["namespace"] == operator.namespace
    assert target["metric"]["service"] == f"{operator.release}-metrics"
    (job,) = prometheus.config["scrape_configs"]
    assert job["scrape_interval"] == "30s" and job["honor_labels"] is True  # the chart's defaults
    series = prometheus.api("series", **{"match[]": "virtfleet_pool_replicas"})
    # honorLabels: a pool's series keep the pool's namespace, not the operator pod's.
    assert CAPACITY_NAMESPACE in {s["namespace"] for s in series}


def test_the_capacity_alert_fires_for_a_pool_that_cannot_fit(
    test_cluster: SessionCluster, operator: Operator, prometheus: Prometheus, results: Path
) -> None:
    groups = prometheus.api("rules")["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert "VirtfleetPoolCapacityExhausted" in alerts and "VirtfleetOperatorDown" in alerts

    def firing() -> dict[str, Any] | None:
        for alert in prometheus.api("alerts")["alerts"]:
            labels = alert["labels"]
            if (
                labels["alertname"] == "VirtfleetPoolCapacityExhausted"
                and labels.get("pool") == "exhausted"
                and labels.get("namespace") == CAPACITY_NAMESPACE
                and alert["state"] == "firing"
            ):
                return alert
        return None

    # The rule says `for: 5m`; the pool was created when the session started.
    alert = wait_for(firing, 480, "VirtfleetPoolCapacityExhausted never fired", interval=5)
    record(results, capacity_alert_fired_after_s=round(time.monotonic() - prometheus.started, 1))
    assert alert["annotations"]["summary"]
