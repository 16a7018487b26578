#!/usr/bin/env bash
# Builds hack/kstatus (kstatus's status.Compute as a command) once per machine: the binary is cached
# outside the clone, keyed on this folder's go.mod, go.sum, main.go and this script.
# Prints the binary's path on stdout as its last line; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

log() { printf '[kstatus] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "ERROR: the Go toolchain is missing (need go >= 1.24 on PATH) - cannot build kstatus"
  exit 3
fi

key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh" | sha256sum | cut -c1-16)
cache_root=${VIRTFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtfleet}
dir="$cache_root/kstatus-$key"
binary="$dir/kstatus"

if [ -x "$binary" ]; then
  log "reusing $binary"
  echo "$binary"
  exit 0
fi

mkdir -p "$dir"
partial=$(mktemp "$dir/kstatus.partial.XXXXXX")
trap 'rm -f "$partial"' EXIT
start=$(date +%s)
log "building kstatus from Go modules (sigs.k8s.io/cli-utils, pinned in $here/go.mod)"
(
  cd "$here"
  CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" -o "$partial" .
) || { log "ERROR: building kstatus failed (see the Go output above)"; exit 4; }
mv -f "$partial" "$binary"  # atomic: concurrent builds each finish with a whole binary
log "kstatus built in $(( $(date +%s) - start ))s"
echo "$binary"
