"""The local control plane is the real thing: version, TLS, RBAC, garbage collection, no orphans."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from virtfleet.localcluster import LocalCluster

pytestmark = pytest.mark.integration


def test_reports_the_pinned_version(cluster: LocalCluster) -> None:
    version = cluster.get_json("/version")
    assert version["gitVersion"] == "v1.34.4"
    client = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == "v1.34.4"


def test_anonymous_and_unprivileged_users_are_refused(cluster: LocalCluster) -> None:
    nobody = cluster.user_kubeconfig("nobody")
    result = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={nobody}", "get", "namespaces"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    # No client certificate: the server's certificate verifies against our CA, and anonymous gets 403.
    anonymous = ssl.create_default_context(cafile=str(cluster.ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.server}/api/v1/namespaces", context=anonymous)
    assert refused.value.code == 403


def test_garbage_collector_deletes_dependents(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    uid = cluster.kubectl(
        "-n", namespace, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False).returncode:
            return
        time.sleep(0.5)
    pytest.fail("the garbage collector never deleted the dependent ConfigMap")


def test_killing_the_launcher_leaves_no_orphans(tmp_path: Path) -> None:
    """Even kill -9 of the launching process takes etcd and kube-apiserver down with it."""
    ready = tmp_path / "ready"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "virtfleet", "localcluster", "--state-dir", str(tmp_path / "state"),
         "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert launcher.poll() is None, "the launcher died before the cluster was up"
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.2)
        children = _children(launcher.pid)
        assert len(children) == 3
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"
