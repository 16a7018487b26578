#!/usr/bin/env bash
# promtool and prometheus from Debian's prometheus package (pinned), unpacked into a cache; prints
# promtool's path last (prometheus sits beside it). promtool lints a live scrape (`check metrics`) and
# the chart's alerts (`check rules`, `test rules`); the kind e2e suite runs prometheus itself against
# the in-cluster operator with the chart's scrape settings and alert rules.
set -euo pipefail
VERSION="2.42.0+ds-5+deb12u1"
CACHE="${VIRTFLEET_CACHE:-$HOME/.cache/virtfleet}/promtool-${VERSION//+/_}"
if [[ -x "$CACHE/promtool" && -x "$CACHE/prometheus" ]]; then
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
install -m 0755 root/usr/bin/prometheus "$CACHE/prometheus"
install -m 0755 root/usr/bin/promtool "$CACHE/promtool"
"$CACHE/promtool" --version >&2
echo "$CACHE/promtool"
