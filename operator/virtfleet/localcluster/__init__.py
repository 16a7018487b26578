"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for tests and
the demo, built from pinned upstream Go modules by hack/controlplane/build.sh.

Not part of the operator: the operator never imports this package (an import-linter contract says so).
"""

from virtfleet.localcluster.cluster import ControlPlaneError, LocalCluster, find_binaries

__all__ = ["ControlPlaneError", "LocalCluster", "find_binaries"]
