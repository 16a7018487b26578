"""The chart's alerts: promtool (Debian's prometheus package) accepts the rule file, and the unit tests
beside it (files/alerts_test.yaml) show each alert firing when it should and not before."""

from __future__ import annotations

import subprocess
from pathlib import Path

from virtfleet.localcluster.testing import REPO, promtool

FILES = REPO / "charts" / "virtfleet" / "files"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool()), *args], capture_output=True, text=True, check=False, cwd=FILES)


def test_rules_are_valid() -> None:
    result = run("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rules_fire_as_their_tests_expect() -> None:
    result = run("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test() -> None:
    import yaml

    rules = yaml.safe_load((FILES / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((FILES / "alerts_test.yaml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    assert alerts <= tested, sorted(alerts - tested)
    assert Path(FILES / "dashboard.json").is_file()
