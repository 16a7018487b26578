# virtfleet: `make test` (everything CI runs) and `make demo` (the product, end to end, locally).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# Builds the pinned control plane once per machine (cached in ~/.cache/virtfleet) and names its bin dir.
WITH_CONTROLPLANE = bin_dir=$$(bash hack/controlplane/build.sh) && VIRTFLEET_BIN_DIR=$$bin_dir
PYTEST_FLAGS ?=
BENCH_FLAGS ?=

.PHONY: kind-images kind-up kind-e2e kind-down test-local kubevirt-images kubevirt-up kubevirt-e2e kubevirt-demo bench-kubevirt
.PHONY: help venv controlplane kstatus chart crds lint format typecheck contracts test-unit test-integration test-reliability e2e test demo demo-stop bench bench-twin bench-pools bench-operator bench-planner bench-report bench-curves clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create the virtualenv with the package and dev tools

controlplane: ## build (or reuse from ~/.cache/virtfleet) etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	@bash hack/controlplane/build.sh >/dev/null

kstatus: ## build (or reuse from ~/.cache/virtfleet) hack/kstatus: kstatus's status.Compute as a command
	@bash hack/kstatus/build.sh >/dev/null

chart: venv ## Helm charts (lint, dry-run, install, RBAC as the ServiceAccount) and the Dockerfile (hadolint)
	$(WITH_CONTROLPLANE) $(BIN)/pytest tests/integration/test_helm_chart.py tests/unit/test_dockerfile.py $(PYTEST_FLAGS)

crds: venv ## regenerate crds/ from the pydantic models (and the CRD chart's copy)
	$(BIN)/virtfleet crds --output crds
	cp crds/virtfleet.io_*.yaml charts/virtfleet-crds/files/crds/

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv ## mypy --strict on the package
	$(BIN)/mypy

contracts: venv ## import-linter: the layers of docs/architecture.md
	$(BIN)/lint-imports

test-unit: venv ## pure unit tests
	$(BIN)/pytest tests/unit $(PYTEST_FLAGS)

test-integration: venv ## tests against the real local control plane
	$(WITH_CONTROLPLANE) $(BIN)/pytest tests/integration $(PYTEST_FLAGS)

test: test-local kind-e2e kubevirt-e2e ## everything: lint, types, contracts, unit, integration, e2e locally, on kind, on real KubeVirt

test-local: venv ## everything that needs no container engine: lint, types, contracts, unit, integration, local e2e
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd hack/kind && CGO_ENABLED=0 go test ./cmd/capfilter/
	$(WITH_CONTROLPLANE) $(BIN)/pytest tests e2e $(PYTEST_FLAGS)

# The kind cluster (docs/kind.md): every image built here from pinned sources, nothing pulled.
kind-images: ## build (or reuse from ~/.cache/virtfleet) kind, the node image and the operator image
	$(PYTHON) hack/kind/build.py all

kind-up: ## a 3-node kind cluster, KubeVirt's CRDs, the operator installed by its Helm charts (starts Docker if needed)
	$(PYTHON) hack/kind/cluster.py up

kind-e2e: venv kind-up ## the e2e suite against the kind cluster, operator in-cluster
	$(WITH_CONTROLPLANE) && PATH=$$bin_dir:$$PATH VIRTFLEET_HELM=$$bin_dir/helm \
	  KUBECONFIG=$$($(PYTHON) hack/kind/cluster.py kubeconfig) \
	  VIRTFLEET_USE_EXISTING_CLUSTER=1 VIRTFLEET_E2E_IN_CLUSTER=1 VIRTFLEET_E2E_OPERATOR=external \
	  $(BIN)/pytest e2e/kind $(PYTEST_FLAGS)

# Real KubeVirt on the kind cluster (docs/kubevirt.md): built from its Go module, installed by virt-operator.
kubevirt-images: ## build (or reuse) KubeVirt v1.7.0's binaries and images, and the e2e guest image
	$(PYTHON) hack/kubevirt/kubevirt_build.py all

kubevirt-up: ## the kind cluster with real KubeVirt (KVM or emulation, as probed) and the operator
	$(PYTHON) hack/kubevirt/install.py up

kubevirt-e2e: venv kubevirt-up ## the e2e suite on real KubeVirt: real guests, hot-plug, live drains
	$(WITH_CONTROLPLANE) && PATH=$$bin_dir:$$PATH VIRTFLEET_HELM=$$bin_dir/helm \
	  KUBECONFIG=$$($(PYTHON) hack/kind/cluster.py kubeconfig) \
	  VIRTFLEET_E2E_GUEST_IMAGE=$$($(PYTHON) hack/kubevirt/kubevirt_build.py guest) \
	  VIRTFLEET_USE_EXISTING_CLUSTER=1 VIRTFLEET_E2E_IN_CLUSTER=1 VIRTFLEET_E2E_KUBEVIRT=1 \
	  VIRTFLEET_E2E_OPERATOR=external $(BIN)/pytest e2e/kubevirt $(PYTEST_FLAGS)

bench-kubevirt: venv kubevirt-up ## real KubeVirt: create -> Running pool vs direct, KubeVirt's pool vs ours, dirty-rate migrations
	$(WITH_CONTROLPLANE) && PATH=$$bin_dir:$$PATH KUBECONFIG=$$($(PYTHON) hack/kind/cluster.py kubeconfig) \
	  VIRTFLEET_E2E_GUEST_IMAGE=$$($(PYTHON) hack/kubevirt/kubevirt_build.py guest) $(BIN)/python bench/kubevirt.py $(BENCH_FLAGS)

kubevirt-demo: ## everything for real with Docker: kind, KubeVirt, the operator, the examples' VMs booted
	$(PYTHON) hack/kubevirt/install.py demo

kind-down: ## delete the kind cluster; stop the Docker engine if kind-up started it
	$(PYTHON) hack/kind/cluster.py down

test-reliability: venv ## the full reliability suite: 10,000 fuzz examples per test, 20 fault trials (see docs/reliability.md)
	$(WITH_CONTROLPLANE) VIRTFLEET_FUZZ_EXAMPLES=10000 VIRTFLEET_RELIABILITY_TRIALS=20 $(BIN)/pytest tests/reliability $(PYTEST_FLAGS)

demo: venv ## start a local control plane + operator, apply examples/, show the result
	$(WITH_CONTROLPLANE) $(BIN)/python hack/demo.py up

demo-stop: venv ## stop everything `make demo` started
	$(BIN)/python hack/demo.py down

# Every benchmark, then one table. Results older than the run's start are reported stale, not used; a
# failing benchmark does not stop the others (-k), but the run fails if anything is missing or missed.
bench: venv ## run every benchmark, then one table: bench/results/latest.json and <date>.md
	@start=$$(date +%s); load="$$(cut -d' ' -f1-3 /proc/loadavg)"; status=0; \
	echo "bench: started $$(date -u '+%F %T') UTC, load average $$load"; \
	$(MAKE) --no-print-directory -k bench-twin bench-pools bench-operator bench-planner bench-curves || status=$$?; \
	$(BIN)/python bench/report.py --since $$start --load-start "$$load" || status=$$?; \
	exit $$status

bench-curves: venv ## draw the cost curves (docs/performance-curves.png) from the results
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/curves.py

bench-report: venv ## the table from whatever bench/results/*.json hold now (no staleness check)
	$(BIN)/python bench/report.py

bench-planner: venv ## plan 10,000 VMs over 500 nodes; execute a 100-VM drain in the twin (concurrency)
	$(WITH_CONTROLPLANE) $(BIN)/python bench/planner.py

bench-twin: venv ## simulated KubeVirt: 5,000 VMs on 100 nodes to Running
	$(WITH_CONTROLPLANE) $(BIN)/python bench/twin.py

bench-pools: venv ## operator vs raw client, 0 -> 1,000 VMs; idle writes with 1,000 VMs managed
	$(WITH_CONTROLPLANE) $(BIN)/python bench/pool_scale.py

bench-operator: venv ## operator peak RSS with 10 pools x 500 VMs; replicas change -> first VM create latency
	$(WITH_CONTROLPLANE) $(BIN)/python bench/operator_scale.py

e2e: venv ## the end-to-end suite alone (KUBECONFIG + VIRTFLEET_USE_EXISTING_CLUSTER=1 for a real cluster)
	$(WITH_CONTROLPLANE) $(BIN)/pytest e2e $(PYTEST_FLAGS)

clean: ## remove the virtualenv and demo state (the control plane cache stays)
	-$(BIN)/python hack/demo.py down 2>/dev/null
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
