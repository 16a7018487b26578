"""virtfleet.kube.credentials: kubeconfigs and service accounts as kubectl and client-go read them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtfleet.kube import credentials
from virtfleet.kube.credentials import Credentials, CredentialsError, from_kubeconfig, in_cluster


def kubeconfig(tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                     {"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443/"}}],
        "users": [{"name": "u", "user": user}],
    }))  # fmt: skip
    return path


def test_relative_files_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path,
        {"client-certificate": "pki/me.crt", "client-key": "/abs/me.key"},
        {"server": "https://10.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
    )
    found = from_kubeconfig(path)
    assert found.server == "https://10.0.0.1:6443"
    assert (found.ca_path, found.certificate_path, found.key_path) == (
        str(tmp_path / "pki/ca.crt"), str(tmp_path / "pki/me.crt"), "/abs/me.key",
    )  # fmt: skip
    assert found.namespace == "team" and found.authorization() is None


def test_embedded_data_and_tokens(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = kubeconfig(
        tmp_path,
        {"token": "abc"},
        {"server": "https://h", "certificate-authority-data": base64.b64encode(pem).decode()},
    )
    found = from_kubeconfig(path)
    assert found.ca_data == pem and found.authorization() == "Bearer abc"
    basic = from_kubeconfig(kubeconfig(tmp_path, {"username": "ann", "password": "pw"}))
    assert basic.authorization() == "Basic " + base64.b64encode(b"ann:pw").decode()


@pytest.mark.parametrize(
    ("user", "cluster", "message"),
    [
        ({"exec": {"command": "aws"}}, None, "users[u].exec is not supported"),
        ({"auth-provider": {"name": "oidc"}}, None, "users[u].auth-provider is not supported"),
        ({}, {"insecure-skip-tls-verify": True}, "clusters[c].server is not set"),
        ({"client-key-data": "not base64!"}, None, "client-key-data is not base64"),
    ],
)
def test_what_cannot_be_used_is_named(
    tmp_path: Path, user: dict[str, Any], cluster: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(CredentialsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_kubeconfig(kubeconfig(tmp_path, user, cluster))


def test_a_missing_or_broken_kubeconfig_is_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="No such file"):
        from_kubeconfig(tmp_path / "absent")
    (tmp_path / "bad").write_text("current-context: nowhere\n")
    with pytest.raises(CredentialsError, match="contexts has no entry named 'nowhere'"):
        from_kubeconfig(tmp_path / "bad")


def test_in_cluster_reads_the_rotating_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "namespace").write_text("virtfleet-system")
    found = in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert found.server == "https://[fd00::1]:443" and found.namespace == "virtfleet-system"
    assert found.ca_path == str(tmp_path / "ca.crt")
    clock = [1000.0]
    monkeypatch.setattr(credentials.time, "monotonic", lambda: clock[0])
    assert found.authorization() == "Bearer first"
    (tmp_path / "token").write_text("second\n")  # the kubelet rotated it
    clock[0] += 30
    assert found.authorization() == "Bearer first"  # read at most once a minute, as client-go does
    clock[0] += credentials.TOKEN_REREAD_S
    assert found.authorization() == "Bearer second"


def test_plain_http_needs_no_tls() -> None:
    assert Credentials(server="http://127.0.0.1:8080").ssl_context() is False
