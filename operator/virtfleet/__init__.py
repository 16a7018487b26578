"""virtfleet: a Kubernetes operator for fleets of KubeVirt virtual machines."""

__version__ = "0.1.0"

GROUP = "virtfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
