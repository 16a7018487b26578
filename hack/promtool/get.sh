#!/usr/bin/env bash
# promtool from Debian's prometheus package (pinned), unpacked into a cache; prints its path last.
# Used to lint a live scrape (`promtool check metrics`) and the chart's alerts (`check rules`, `test rules`).
set -euo pipefail
VERSION="2.42.0+ds-5+deb12u1"
CACHE="${VIRTFLEET_CACHE:-$HOME/.cache/virtfleet}/promtool-${VERSION//+/_}"
if [[ -x "$CACHE/promtool" ]]; then
  echo "$CACHE/promtool"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download "prometheus=$VERSION" >/dev/null 2>&1; then
  # A machine whose package lists are missing or stale: refresh them once (needs root), then retry.
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download "prometheus=$VERSION" >/dev/null
fi
dpkg-deb -x prometheus_*.deb root
mkdir -p "$CACHE"
install -m 0755 root/usr/bin/promtool "$CACHE/promtool"
"$CACHE/promtool" --version >&2
echo "$CACHE/promtool"
