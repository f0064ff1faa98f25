#!/usr/bin/env bash
# Installs the Debian packages lparvisor needs to build and test. Idempotent: installs only
# what is missing, so a second run does nothing.
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --qemu     also QEMU, busybox and cpio (nested-KVM harness, benchmarks)
set -euo pipefail

# chromium, python3-websocket and python3-prometheus-client: the HTTP listener's test drives the
# SVP frame in headless Chromium (tests/support/cdp.py) and parses /metrics with Prometheus's own
# parser.
packages=(cmake make g++ pkg-config linux-libc-dev catch2 nlohmann-json3-dev libboost-dev
          libcli11-dev libspdlog-dev libfmt-dev libseccomp-dev clang-format clang-tidy
          chromium python3-websocket python3-prometheus-client)
if [[ "${1:-}" == "--qemu" ]]; then
  packages+=(qemu-system-x86 busybox-static cpio xz-utils zstd)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present" >&2
  exit 0
fi

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
