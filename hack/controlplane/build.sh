#!/usr/bin/env bash
# Builds the pinned upstream control plane (kube-apiserver, kube-controller-manager, kubectl, etcd, helm)
# from Go modules, once per machine: binaries are cached outside the clone, keyed on this folder's
# go.mod, go.sum and this script, so every fresh clone (CI's included) reuses them.
# Prints the bin directory on stdout as its last line; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kube_version=v1.34.4
helm_version=v3.19.5

log() { printf '[controlplane] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: the Go toolchain is missing (need go >= 1.24 on PATH) - cannot build the control plane"
  exit 3
fi

key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here/cmd/etcd/main.go" | sha256sum | cut -c1-16)
cache_root=${VIRTFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtfleet}
bin="$cache_root/controlplane-$key/bin"
tools=(kube-apiserver kube-controller-manager kubectl etcd helm)

complete=1
for t in "${tools[@]}"; do [ -x "$bin/$t" ] || complete=0; done
if [ "$complete" = 1 ]; then
  log "reusing cached binaries in $bin"
  echo "$bin"
  exit 0
fi

mkdir -p "$bin.partial"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
start=$(date +%s)
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
minor=${kube_version#v1.}; minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

log "building kube-apiserver, kube-controller-manager, kubectl $kube_version and etcd from Go modules"
log "(a cold build takes many minutes on two cores; later runs reuse $bin)"
(
  cd "$here"
  go build -trimpath -ldflags "-s -w $stamp" -o "$bin.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl \
    ./cmd/etcd
) || { log "ERROR: building the Kubernetes control plane failed (see the Go output above)"; exit 4; }
log "kubernetes and etcd built after $(( $(date +%s) - start ))s; building helm $helm_version"
GOBIN="$bin.partial" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
  "helm.sh/helm/v3/cmd/helm@$helm_version" \
  || { log "ERROR: building helm $helm_version failed (see the Go output above)"; exit 5; }

rm -rf "$bin"
mv "$bin.partial" "$bin"
log "control plane built in $(( $(date +%s) - start ))s into $bin"
echo "$bin"
