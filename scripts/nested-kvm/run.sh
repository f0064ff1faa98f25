#!/usr/bin/env bash
# scripts/nested-kvm/run.sh — run a command inside a Linux guest that has a
# working /dev/kvm, on a host that has none.
#
# Boots a Debian kernel (scripts/fetch-debian-kernel.sh) under QEMU *TCG*
# (pure software emulation) with an emulated AMD CPU that has SVM + NPT,
# loads kvm.ko + kvm-amd.ko in the guest, runs COMMAND there and exits with
# COMMAND's exit status.  See README.md next to this script.
#
# Usage:
#   run.sh [options] -- COMMAND [ARGS...]
# Options:
#   --mem MiB            guest memory (default 2048)
#   --smp N              guest vCPUs (default 1: see README.md, "Gotchas")
#   --timeout S          wall-clock limit for the whole run (default 600);
#                        exit status 124 when it is hit
#   --file HOST[:GUEST]  copy HOST (file or directory) into the guest.
#                        GUEST defaults to /work/<basename of HOST>; a
#                        relative GUEST is relative to /work.  Shared
#                        libraries that dynamically linked ELF files need
#                        (found with ldd on the host) and the dynamic
#                        loader are copied to the same absolute paths.
#                        May be repeated.
#   --cpu MODEL          QEMU -cpu value (default EPYC-Rome,+svm,+npt; "max"
#                        and "qemu64,+svm" work too)
#   --kvm-amd-params P   parameters for insmod kvm-amd.ko (default: none),
#                        e.g. "avic=0 nested=0"
#   --append ARGS        extra kernel command line arguments
#   --accel A            QEMU -accel value (default "tcg,thread=single": all
#                        vCPUs on one host thread).  "tcg" (multi-threaded TCG,
#                        one host thread per vCPU) hangs or panics the guest
#                        when two vCPUs run nested guests at once (README.md)
#   --flavour F          kernel flavour for fetch-debian-kernel.sh (cloud)
#   --keep               keep the work directory (initramfs, serial log)
#   -v, --verbose        do not pass "quiet" to the guest kernel
#
# Working directory: COMMAND runs with cwd /work in the guest, where the
# --file copies are placed by default, so `--file build/foo -- ./foo` works.
# PATH in the guest is /work:/bin:/sbin:/usr/bin:/usr/sbin (busybox applets).
# /tmp is a tmpfs; /proc, /sys, /dev (devtmpfs) are mounted.  Guest stdout
# and stderr both arrive on this script's stdout (one serial console).
#
# Exit status: COMMAND's exit status, taken from the line
# "NESTED-KVM-EXIT=<rc>" that the guest's /init prints after COMMAND ends;
# 124 if the timeout is hit first; 125 if the guest stopped without printing
# the marker (kernel panic, /dev/kvm missing, ...); 2 for usage errors.
#
# Environment: LPARVISOR_CACHE (default ~/.cache/lparvisor) for the kernel and
# work directories; QEMU (default qemu-system-x86_64); BUSYBOX (default
# /bin/busybox, must be static: apt-get install busybox-static).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# TCG emulates SVM (incl. nested paging) for any CPU model with +svm; an AMD
# vendor string is required because kvm-amd refuses to load on non-AMD/Hygon
# vendors.  QEMU 7.2 TCG has no nrip-save/avic/vls; kvm-amd copes (it decodes
# instructions itself).  Features of the EPYC model that TCG cannot emulate
# are dropped by QEMU with a warning each, which we filter out.
DEFAULT_CPU="EPYC-Rome,+svm,+npt"

mem=2048 smp=1 timeout_s=600 cpu=$DEFAULT_CPU accel=tcg,thread=single kvm_amd_params="" append=""
flavour=cloud keep=0 quiet=quiet
files=()
usage() { sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --mem) mem="$2"; shift 2 ;;
        --smp) smp="$2"; shift 2 ;;
        --timeout) timeout_s="$2"; shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        --kvm-amd-params) kvm_amd_params="$2"; shift 2 ;;
        --append) append="$2"; shift 2 ;;
        --accel) accel="$2"; shift 2 ;;
        --flavour) flavour="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -v|--verbose) quiet=""; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) echo "nested-kvm: unknown option $1 (did you forget --?)" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || { echo "nested-kvm: no COMMAND given" >&2; usage; }

log() { echo "nested-kvm: $*" >&2; }
QEMU=${QEMU:-qemu-system-x86_64}
BUSYBOX=${BUSYBOX:-/bin/busybox}
command -v "$QEMU" >/dev/null || { log "$QEMU not found (apt-get install qemu-system-x86)"; exit 2; }
command -v cpio >/dev/null || { log "cpio not found (apt-get install cpio)"; exit 2; }
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' &&
   ! { [ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1; }; then
    log "$BUSYBOX is not a static busybox (apt-get install busybox-static)"; exit 2
fi

# --- kernel ---------------------------------------------------------------
"$here/../fetch-debian-kernel.sh" --flavour "$flavour" >&2
cache="${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}"
# shellcheck disable=SC1090
. "$cache/kernel/$flavour/kernel.env"

mkdir -p "$cache/nested-kvm"
work=$(mktemp -d "$cache/nested-kvm/run.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,work,lib/modules,etc}

# --- busybox --------------------------------------------------------------
cp "$BUSYBOX" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/sh"   # the other applet links: busybox --install in /init

# --- kernel modules (kvm-amd and its dependencies, from modules.dep) -------
depfile="$KERNEL_MODULES/modules.dep"
declare -A seen=()
modlist=()
add_module() { # relative path from modules.dep; dependencies first
    local m="$1" deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    deps=$(awk -F': *' -v m="$m" '$1 == m { print $2; exit }' "$depfile")
    for d in $deps; do add_module "$d"; done
    modlist+=("$m")
}
kvm_amd=$(awk -F: '$1 ~ /\/kvm-amd\.ko/ { print $1; exit }' "$depfile")
[ -n "$kvm_amd" ] || { log "no kvm-amd module in $KERNEL_MODULES (try --flavour generic)"; exit 2; }
add_module "$kvm_amd"
: > "$rootfs/lib/modules/load.list"
for m in "${modlist[@]}"; do
    name=$(basename "$m"); name=${name%%.ko*}.ko
    case "$m" in
        *.ko.xz) xz -dc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *.ko.zst) zstd -qdc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *.ko.gz) gzip -dc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *) cp "$KERNEL_MODULES/$m" "$rootfs/lib/modules/$name" ;;
    esac
    params=""
    [ "$name" = kvm-amd.ko ] && params=$kvm_amd_params
    echo "$name $params" >> "$rootfs/lib/modules/load.list"
done
log "modules: $(awk '{print $1}' "$rootfs/lib/modules/load.list" | tr '\n' ' ')"

# --- user files + shared libraries ---------------------------------------
copy_libs() { # ELF file: copy its shared libraries + loader to same paths
    local f="$1" lib
    file -L "$f" 2>/dev/null | grep -q 'dynamically linked' || return 0
    for lib in $(ldd "$f" 2>/dev/null | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]+/ { print $1 }'); do
        [ -e "$rootfs$lib" ] && continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}
for spec in "${files[@]}"; do
    host=${spec%%:*}
    if [ "$host" != "$spec" ]; then guest=${spec#*:}; else guest=$(basename "$host"); fi
    case "$guest" in /*) ;; *) guest="/work/$guest" ;; esac
    [ -e "$host" ] || { log "--file $host: no such file"; exit 2; }
    mkdir -p "$rootfs$(dirname "$guest")"
    cp -aL "$host" "$rootfs$guest"
    if [ -d "$host" ]; then
        while IFS= read -r -d '' f; do copy_libs "$f"; done < <(find "$host" -type f -perm -u+x -print0)
    else
        copy_libs "$host"
    fi
    log "file: $host -> $guest"
done

# --- the command (single-quoted for ash) -----------------------------------
{
    printf 'exec'
    for a in "$@"; do printf " '%s'" "${a//\'/\'\\\'\'}"; done
    printf '\n'
} > "$rootfs/cmd.sh"

# --- /init -----------------------------------------------------------------
cat > "$rootfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/work:/bin:/sbin:/usr/bin:/usr/sbin HOME=/work TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
finish() {
    echo "NESTED-KVM-EXIT=$1"
    sync
    poweroff -f
    sleep 5
    echo o > /proc/sysrq-trigger
}
echo "nested-kvm: guest up after $(cut -d' ' -f1 /proc/uptime)s" >&2
while read -r mod params; do
    # shellcheck disable=SC2086
    if ! insmod /lib/modules/$mod $params; then
        echo "nested-kvm: insmod $mod failed" >&2
        dmesg | tail -n 20 >&2
        finish 125
    fi
done < /lib/modules/load.list
if [ ! -c /dev/kvm ]; then
    echo "nested-kvm: /dev/kvm missing after loading modules" >&2
    dmesg | grep -iE 'kvm|svm' >&2
    finish 125
fi
echo "nested-kvm: /dev/kvm ready after $(cut -d' ' -f1 /proc/uptime)s; running command" >&2
cd /work
sh /cmd.sh
finish $?
INIT
chmod +x "$rootfs/init"

(cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet) > "$work/initramfs.cpio"
log "initramfs: $(du -h "$work/initramfs.cpio" | cut -f1) (uncompressed cpio)"

# --- boot ------------------------------------------------------------------
serial_log="$work/serial.log"
cmdline="console=ttyS0 panic=-1 $quiet loglevel=3 mitigations=off nokaslr rdinit=/init $append"
log "booting $KERNEL_VERSION under QEMU -accel $accel: -cpu $cpu -smp $smp -m $mem, timeout ${timeout_s}s"
start=$(date +%s.%N)
set +e
# thread=single: see --accel above. stdbuf: line by line, so a long run shows its progress.
timeout -k 5 "$timeout_s" "$QEMU" \
    -accel "$accel" -machine q35 -cpu "$cpu" -smp "$smp" -m "$mem" \
    -kernel "$KERNEL_VMLINUZ" -initrd "$work/initramfs.cpio" -append "$cmdline" \
    -display none -monitor none -no-reboot \
    -chardev stdio,id=ser0,signal=off -serial chardev:ser0 \
    -nodefaults </dev/null 2> "$work/qemu.stderr" |
    stdbuf -oL tr -d '\r' | tee "$serial_log"
qemu_rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
# QEMU warns about each CPU feature TCG cannot emulate; show anything else.
grep -v 'TCG doesn.t support requested feature' "$work/qemu.stderr" >&2 || true
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

rc=$(sed -n 's/.*NESTED-KVM-EXIT=\([0-9]*\)$/\1/p' "$serial_log" | tail -n 1)
if [ -n "$rc" ]; then
    log "command exited with $rc; total ${elapsed}s"
    exit "$rc"
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    log "TIMEOUT after ${timeout_s}s (no NESTED-KVM-EXIT marker)"
    exit 124
fi
log "guest stopped without NESTED-KVM-EXIT marker (qemu rc $qemu_rc, ${elapsed}s); rerun with -v --keep"
exit 125
