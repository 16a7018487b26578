"""Where the API server is and how to prove who we are: the pod's service account, or a kubeconfig.

One reader for both clients in the operator (virtfleet's own, and kopf's through its login handler), so they
never disagree about the cluster. Only what needs no plug-in is supported: certificates, bearer tokens
(also from a file, re-read as the kubelet rotates it), basic auth. An exec or auth-provider plug-in is
refused by name rather than ignored.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_S = 60.0  # client-go re-reads a token file every minute: bound tokens rotate under it


class CredentialsError(ValueError):
    """The kubeconfig or service account cannot be used; the message names the file and field."""


@dataclass
class Credentials:
    server: str
    ca_path: str | None = None
    ca_data: bytes | None = None  # PEM
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    key_path: str | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    namespace: str | None = None
    _token_read_at: float = field(default=-TOKEN_REREAD_S, repr=False)

    def authorization(self) -> str | None:
        """The Authorization header value, if any (a token file is re-read once a minute)."""
        if self.token_file and time.monotonic() - self._token_read_at >= TOKEN_REREAD_S:
            self.token = Path(self.token_file).read_text().strip() or None
            self._token_read_at = time.monotonic()
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS that trusts the cluster's CA (the system's when none is given) and presents our client
        certificate; False (no verification) only when the kubeconfig says insecure-skip-tls-verify."""
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(
            cafile=self.ca_path, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.certificate_path or self.certificate_data:
            with (
                _pem_file(self.certificate_path, self.certificate_data) as cert,
                _pem_file(self.key_path, self.key_data) as key,
            ):
                context.load_cert_chain(cert, key)
        return context


@contextmanager
def _pem_file(path: str | None, data: bytes | None) -> Iterator[str]:
    """A certificate or key as a path ssl can load: the given one, or the PEM in a private temporary file
    for the moment of loading."""
    if path:
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="virtfleet-", suffix=".pem") as temporary:
        temporary.write(data or b"")
        temporary.flush()
        yield temporary.name


def load(kubeconfig: str | None = None) -> Credentials:
    """In-cluster credentials when running in a pod (and no kubeconfig is named), else the kubeconfig:
    `kubeconfig`, KUBECONFIG (read now, not at import) or ~/.kube/config."""
    if (
        kubeconfig is None
        and "KUBERNETES_SERVICE_HOST" in os.environ
        and (SERVICE_ACCOUNT / "token").exists()
    ):
        return in_cluster(os.environ)
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    return from_kubeconfig(Path(path).expanduser())


def in_cluster(environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> Credentials:
    host, port = environ["KUBERNETES_SERVICE_HOST"], environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    namespace = account / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(account / "ca.crt"),
        token_file=str(account / "token"),
        namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def from_kubeconfig(path: Path) -> Credentials:
    """The current context's cluster and user. Relative file names are relative to the kubeconfig, as
    kubectl reads them."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise CredentialsError(f"kubeconfig {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise CredentialsError(f"kubeconfig {path}: not YAML ({error})") from None

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in config.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                found: dict[str, Any] = item.get(section[:-1]) or {}
                return found
        raise CredentialsError(f"kubeconfig {path}: {section} has no entry named {name!r}")

    context_name = config.get("current-context")
    if not context_name:
        raise CredentialsError(f"kubeconfig {path}: current-context is not set")
    context = named("contexts", context_name)
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user"))
    for plugin in ("exec", "auth-provider"):
        if plugin in user:
            raise CredentialsError(
                f"kubeconfig {path}: users[{context.get('user')}].{plugin} is not supported; "
                "use a token, a client certificate or the pod's service account"
            )
    if not cluster.get("server"):
        raise CredentialsError(f"kubeconfig {path}: clusters[{context.get('cluster')}].server is not set")

    def file(value: Any) -> str | None:
        return str(path.parent / Path(value).expanduser()) if value else None

    def data(where: str, value: Any) -> bytes | None:
        if not value:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise CredentialsError(f"kubeconfig {path}: {where} is not base64") from None

    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=file(cluster.get("certificate-authority")),
        ca_data=data("certificate-authority-data", cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        certificate_path=file(user.get("client-certificate")),
        certificate_data=data("client-certificate-data", user.get("client-certificate-data")),
        key_path=file(user.get("client-key")),
        key_data=data("client-key-data", user.get("client-key-data")),
        token=user.get("token"),
        token_file=file(user.get("tokenFile")),
        username=user.get("username"),
        password=user.get("password"),
        namespace=context.get("namespace"),
    )
