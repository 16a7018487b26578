"""Start and stop a local control plane as child processes, with real TLS and RBAC."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from virtfleet.localcluster.pki import CertificateAuthority, KeyPair, service_account_keys

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# RFC 5737 documentation address: never routed, so nothing ever connects to it, yet it lets
# kube-apiserver start on hosts that have no default route (it refuses a loopback advertise address).
ADVERTISE_ADDRESS = "192.0.2.10"
SERVICE_CIDR = "10.96.0.0/24"
SERVICE_IP = "10.96.0.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "clusterrole-aggregation-controller",
)
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, found or started."""


def _repo_build_script() -> Path | None:
    # operator/virtfleet/localcluster/cluster.py -> the repository root, for source checkouts.
    script = Path(__file__).resolve().parents[3] / "hack" / "controlplane" / "build.sh"
    return script if script.is_file() else None


def find_binaries(build: bool = True) -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager and kubectl.

    VIRTFLEET_BIN_DIR wins; otherwise, in a source checkout, hack/controlplane/build.sh builds the pinned
    versions (or reuses its cache) and says where they are.
    """
    configured = os.environ.get("VIRTFLEET_BIN_DIR")
    if configured:
        directory = Path(configured)
    else:
        script = _repo_build_script()
        if script is None or not build:
            raise ControlPlaneError(
                "no control plane binaries: set VIRTFLEET_BIN_DIR to a directory holding "
                + ", ".join(BINARIES)
                + " (a source checkout builds them with hack/controlplane/build.sh)"
            )
        result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
        if result.returncode != 0:
            raise ControlPlaneError(f"{script} failed with exit code {result.returncode}")
        directory = Path(result.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not os.access(directory / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{directory} lacks {', '.join(missing)}")
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGKILL when the launcher dies, even by kill -9: no orphaned etcd or apiserver.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """A running control plane. Use as a context manager, or call stop()."""

    bin_dir: Path
    state_dir: Path
    api_port: int
    kubeconfig: Path
    ca: Path
    admin: KeyPair
    _authority: CertificateAuthority | None = None
    _processes: list[_Process] = field(default_factory=list)
    _owns_state_dir: bool = False

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        bin_dir: Path | None = None,
        state_dir: Path | None = None,
        timeout: float = 90.0,
        log: IO[str] = sys.stderr,
    ) -> LocalCluster:
        bin_dir = bin_dir or find_binaries()
        owns = state_dir is None
        state = Path(tempfile.mkdtemp(prefix="virtfleet-cp-")) if state_dir is None else state_dir
        state.mkdir(parents=True, exist_ok=True)
        pki = state / "pki"
        ca = CertificateAuthority(pki)
        admin = ca.issue("admin", "virtfleet-admin", organizations=("system:masters",))
        cluster = cls(
            bin_dir=bin_dir,
            state_dir=state,
            api_port=free_port(),
            kubeconfig=state / "kubeconfig",
            ca=ca.cert_path,
            admin=admin,
            _authority=ca,
            _owns_state_dir=owns,
        )
        try:
            cluster._boot(ca, timeout, log)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _boot(self, ca: CertificateAuthority, timeout: float, log: IO[str]) -> None:
        started = time.monotonic()
        pki = self.state_dir / "pki"
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", ADVERTISE_ADDRESS, SERVICE_IP),
            server=True,
        )
        kcm_client = ca.issue("controller-manager", "system:kube-controller-manager")
        sa = service_account_keys(pki)
        self._write_kubeconfig(self.kubeconfig, "virtfleet-admin", self.admin)
        kcm_kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kcm_kubeconfig, "system:kube-controller-manager", kcm_client)

        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                "--name=virtfleet",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=virtfleet=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # throwaway data: durability buys nothing and costs seconds
                "--log-level=warn",
            ],
        )
        self._wait(f"{etcd_url}/health", "etcd", started + timeout, tls=False)
        print(f"[localcluster] etcd ready on {etcd_url}", file=log)

        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--advertise-address={ADVERTISE_ADDRESS}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                f"--client-ca-file={self.ca}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--cert-dir={pki}",
                f"--service-account-issuer={ISSUER}",
                f"--api-audiences={ISSUER}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--profiling=false",
                "--v=0",
            ],
        )
        self._wait(f"{self.server}/readyz", "kube-apiserver", started + timeout, tls=True)
        print(f"[localcluster] kube-apiserver ready on {self.server}", file=log)

        kcm_port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={self.ca}",
                "--use-service-account-credentials=true",  # each controller acts with its own RBAC role
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={pki / 'kcm'}",
                "--v=0",
            ],
        )
        self._wait(
            f"https://127.0.0.1:{kcm_port}/healthz",
            "kube-controller-manager",
            started + timeout,
            tls=True,
            verify=False,
        )
        print(
            f"[localcluster] kube-controller-manager ready; control plane up in "
            f"{time.monotonic() - started:.1f}s (kubeconfig: {self.kubeconfig})",
            file=log,
        )

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in reversed(self._processes):
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
            process.log_file.close()
        self._processes.clear()
        if self._owns_state_dir and not os.environ.get("VIRTFLEET_KEEP_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def restart_apiserver(self, downtime: float) -> float:
        """Stop kube-apiserver alone (SIGTERM, SIGKILL after 5 s), keep it down `downtime` seconds, start it
        again with the same arguments (port, etcd, certificates); returns time.monotonic() once /readyz
        answers. For reliability tests: clients see the API vanish and come back."""
        process = next(p for p in self._processes if p.name == "kube-apiserver")
        args = [str(a) for a in process.popen.args][1:]  # type: ignore[union-attr]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        process.log_file.close()
        self._processes.remove(process)
        time.sleep(downtime)
        self._spawn("kube-apiserver", args)
        self._wait(f"{self.server}/readyz", "kube-apiserver", time.monotonic() + 60, tls=True)
        return time.monotonic()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as `user` (client certificate), with no rights until RBAC grants some."""
        if self._authority is None:
            raise ControlPlaneError("this cluster's certificate authority is not available")
        safe = "".join(c if c.isalnum() else "-" for c in user)
        pair = self._authority.issue(f"user-{safe}", user, organizations=groups)
        path = self.state_dir / f"{safe}.kubeconfig"
        self._write_kubeconfig(path, user, pair)
        return path

    def check_alive(self) -> None:
        for process in self._processes:
            code = process.popen.poll()
            if code is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with code {code}; last log lines:\n{process.tail()}"
                )

    # -- helpers -------------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as the admin user."""
        result = subprocess.run(
            [
                str(self.bin_dir / "kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.state_dir / 'kubectl-cache'}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, paths: Sequence[Path], wait_established: bool = True) -> None:
        """Server-side apply manifests (files or directories); wait for any CRDs among them."""
        args = ["apply", "--server-side", "--field-manager=virtfleet-localcluster"]
        for path in paths:
            args += ["-f", str(path)]
        self.kubectl(*args)
        if wait_established:
            names = [name for path in paths for name in _crd_names(path)]
            if names:
                self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
                # Discovery cached before the CRDs existed would hide their kinds and categories.
                shutil.rmtree(self.state_dir / "kubectl-cache", ignore_errors=True)

    def get_json(self, path: str) -> Any:
        """GET a raw API path as the admin user."""
        with urllib.request.urlopen(self.server + path, context=self._ssl_context()) as response:
            return json.load(response)

    def _ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return context

    def _spawn(self, name: str, args: list[str]) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._processes.append(_Process(name, popen, log_path, log_file))

    def _wait(self, url: str, name: str, deadline: float, tls: bool, verify: bool = True) -> None:
        context = self._ssl_context(verify) if tls else None
        last_error = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError, ssl.SSLError) as error:
                last_error = str(error)
            time.sleep(0.2)
        process = next((p for p in self._processes if p.name == name), None)
        tail = process.tail() if process else ""
        raise ControlPlaneError(f"{name} not ready at {url}: {last_error}\n{tail}")

    def _write_kubeconfig(self, path: Path, user: str, pair: KeyPair) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "virtfleet-local",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
                }
            ],
            "contexts": [
                {"name": "virtfleet-local", "context": {"cluster": "virtfleet-local", "user": user}}
            ],
            "current-context": "virtfleet-local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)


def _manifests(path: Path) -> Iterator[dict[str, Any]]:
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    for file in files:
        for document in yaml.safe_load_all(file.read_text()):
            if isinstance(document, dict):
                yield document


def _crd_names(path: Path) -> list[str]:
    return [
        f"crd/{doc['metadata']['name']}"
        for doc in _manifests(path)
        if doc.get("kind") == "CustomResourceDefinition"
    ]
