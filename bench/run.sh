#!/usr/bin/env bash
# Relocation benchmark, end to end: build, run lparvisor-bench (under the nested-KVM harness when
# this host has no /dev/kvm), run the QEMU live-migration peer on the host, merge the JSON into
# bench/results/latest.json and draw bench/results/pause.svg.
#
#   bench/run.sh [--quick] [--skip-qemu] [--skip-lparvisor] [-- extra lparvisor-bench options]
#
# Environment: BUILD_DIR (default build-bench: its own tree, tests off), RESULTS (default
# bench/results), QEMU_RUNS (default 3, quick 2), NESTED_MEM (MiB; default from the largest size).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${BUILD_DIR:-build-bench}
results=${RESULTS:-bench/results}
quick=""
skip_qemu=0
skip_lpv=0
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=--quick ;;
        --skip-qemu) skip_qemu=1 ;;
        --skip-lparvisor) skip_lpv=1 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: $0 [--quick] [--skip-qemu] [--skip-lparvisor] [-- lparvisor-bench options]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$results"
# What was measured: the commit, and whether the hypervisor sources differed from it.
BENCH_SOURCE="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- hypervisor guest-firmware 2>/dev/null || BENCH_SOURCE+=" + uncommitted changes in hypervisor/ or guest-firmware/"
export BENCH_SOURCE

# Sizes of this run (lparvisor-bench's default, or --sizes among the extra options).
sizes=64,256,1024
rest=()  # the extra options less --sizes, which run.sh passes itself
for ((i = 0; i < ${#extra[@]}; i++)); do
    if [ "${extra[$i]}" = --sizes ]; then sizes=${extra[$((i + 1))]}; i=$((i + 1)); else rest+=("${extra[$i]}"); fi
done
extra=("${rest[@]+"${rest[@]}"}")
[ -n "$quick" ] && sizes=$(echo "$sizes" | tr , '\n' | awk '$1 <= 256' | paste -sd, -)
largest=$(echo "$sizes" | tr , '\n' | sort -n | tail -1)
main_mib=$((2 * largest + 64))

echo "== build ($build)" >&2
if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" -DLPARVISOR_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" --target lparvisor-bench lparvisor-firmware -j"$(nproc)" >/dev/null
bench_bin=$build/bench/lparvisor-bench
firmware=$build/guest-firmware/lparvisor-firmware

log=$results/lparvisor.log
if [ $skip_lpv = 0 ]; then
    # Main storage on 2 MiB hugetlb where we may raise the pool (the design's recommended backing).
    hp_pages=$((main_mib / 2 + 8))
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        echo "== lparvisor-bench on this host's /dev/kvm" >&2
        if [ "$(id -u)" = 0 ]; then
            cur=$(cat /proc/sys/vm/nr_hugepages)
            [ "$cur" -lt "$hp_pages" ] && echo "$hp_pages" > /proc/sys/vm/nr_hugepages || true
        fi
        LPARVISOR_FIRMWARE=$root/$firmware "$bench_bin" $quick --sizes "$sizes" --json "$results/lparvisor.json" \
            "${extra[@]}" 2>&1 | tee "$log"
    else
        # No /dev/kvm (e.g. this host is itself a PVM guest): real KVM inside QEMU TCG with nested
        # SVM. Everything there is emulated: compare ratios within the run, not absolute times.
        mem=${NESTED_MEM:-$((2 * main_mib + 1024 > 2048 ? 2 * main_mib + 1024 : 2048))}
        timeout=$([ -n "$quick" ] && echo 900 || echo 5400)
        echo "== lparvisor-bench inside scripts/nested-kvm (no /dev/kvm here): --mem $mem" >&2
        scripts/nested-kvm/run.sh --timeout "$timeout" --mem "$mem" \
            --file "$bench_bin" --file "$firmware" -- \
            sh -c "echo $hp_pages > /proc/sys/vm/nr_hugepages; \
                   LPARVISOR_BENCH_KVM_KIND=nested-tcg BENCH_SOURCE='$BENCH_SOURCE' \
                   LPARVISOR_FIRMWARE=/work/lparvisor-firmware ./lparvisor-bench $quick --sizes $sizes \
                   --json - ${extra[*]:-}" 2>&1 | tee "$log"
        # The harness writes nothing back: the JSON comes out on the serial console.
        sed -n '/^LPARVISOR-BENCH-JSON-BEGIN$/,/^LPARVISOR-BENCH-JSON-END$/p' "$log" | sed '1d;$d' \
            > "$results/lparvisor.json"
        python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$results/lparvisor.json" \
            || { echo "run.sh: no valid JSON from lparvisor-bench (see $log)" >&2; exit 1; }
    fi
fi

if [ $skip_qemu = 0 ]; then
    # The fixed rates both systems reach (QEMU runs the guest at CPL0 under TCG: no "max").
    rates=idle,25000,200000
    for ((i = 0; i < ${#extra[@]}; i++)); do
        [ "${extra[$i]}" = --rates ] && rates=$(echo "${extra[$((i + 1))]}" | tr , '\n' | grep -vx max | paste -sd, -)
    done
    echo "== QEMU local live migration on the host" >&2
    python3 bench/qemu_migration.py $quick --sizes "$sizes" --rates "$rates" --runs "${QEMU_RUNS:-3}" \
        --firmware "$firmware" --json "$results/qemu.json" 2>&1 | tee "$results/qemu.log"
fi

python3 bench/chart.py --lparvisor "$results/lparvisor.json" --qemu "$results/qemu.json" \
    --out "$results/latest.json" --svg "$results/pause.svg"
echo "== wrote $results/latest.json and $results/pause.svg" >&2
