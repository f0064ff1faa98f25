#!/usr/bin/env bash
# Builds lparvisor and runs every test with ctest. Installs what it needs first (idempotent).
#   scripts/test.sh                 Release-with-debug-info build in build/, all tests
#   scripts/test.sh --sanitize      ASan + UBSan build in build-sanitize/
# Tests that need /dev/kvm print "SKIPPED ... needs KVM" and ctest lists them as skipped where
# the host has no KVM; they are never counted as passed.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [[ "${1:-}" == "--sanitize" ]]; then
  build_dir=build-sanitize
  cmake_args+=(-DLPARVISOR_SANITIZE=ON)
fi

scripts/install-deps.sh --qemu
# The Linux guest (Debian cloud kernel + busybox initramfs) for test_linux_guest; cached.
scripts/build-linux-guest.sh
jobs=$(nproc)
cmake -S . -B "$build_dir" "${cmake_args[@]}" >/dev/null
cmake --build "$build_dir" -j"$jobs"
cd "$build_dir"
ctest --output-on-failure -j"$jobs" --timeout 1800
