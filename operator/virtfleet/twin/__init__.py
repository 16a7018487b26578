"""The twin: a SIMULATED KubeVirt runtime (virt-controller, virt-handler and the scheduler's part).

It is not KubeVirt. It plays KubeVirt's runtime inside a real control plane, for tests, the demo and
what-if planning, talking to the API only through the API server. The operator never imports it (an
import-linter contract says so). See docs/twin.md for what it simulates and every simplification.
"""

BANNER = "simulated KubeVirt (virtfleet twin) - not a real hypervisor"
