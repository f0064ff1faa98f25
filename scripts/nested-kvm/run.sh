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
#   --hostfwd H:G        forward TCP port H on the host's 127.0.0.1 to port G
#                        in the guest (both 1-65535; at most one --hostfwd).
#                        Gives the guest a virtio NIC on QEMU user networking
#                        with restrict=on (the guest reaches nothing outside),
#                        configured as 10.0.2.15/24, gateway 10.0.2.2, before
#                        COMMAND runs.  A server in the guest must listen on
#                        0.0.0.0 or 10.0.2.15 (not 127.0.0.1) to be reached.
#   --keep               keep the work directory (initramfs, serial log)
#   -v, --verbose        do not pass "quiet" to the guest kernel
#
# Working directory: COMMAND runs with cwd /work in the guest, where the
# --file copies are placed by default, so `--file build/foo -- ./foo` works.
# PATH in the guest is /work:/bin:/sbin:/usr/bin:/usr/sbin (busybox applets).
# /tmp is a tmpfs; /proc, /sys, /dev (devtmpfs) are mounted; loopback (lo) is
# up.  Without --hostfwd the guest has no other network.  Guest stdout
# and stderr both arrive on this script's stdout (one serial console).
#
# Exit status: COMMAND's exit status, taken from the line
# "NESTED-KVM-EXIT=<rc>" that the guest's /init prints after COMMAND ends;
# 124 if the timeout is hit first; 125 if the guest stopped without printing
# the marker (kernel panic, /dev/kvm missing, no NIC for --hostfwd, ...); 2
# for usage errors.
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
flavour=cloud keep=0 quiet=quiet hostfwd="" hostfwd_given=0
files=()
# The header comment up to `set -euo pipefail`, so it cannot drift out of range.
usage() { sed -n '2,/^set -euo pipefail/{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
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
        --hostfwd)
            [ "$hostfwd_given" = 0 ] || { echo "nested-kvm: --hostfwd given twice (at most one)" >&2; exit 2; }
            hostfwd="$2" hostfwd_given=1; shift 2 ;;
        --keep) keep=1; shift ;;
        -v|--verbose) quiet=""; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) echo "nested-kvm: unknown option $1 (did you forget --?)" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || { echo "nested-kvm: no COMMAND given" >&2; usage; }
# Explicit ports only: host port 0 would make QEMU pick one that nobody learns.
fwd_host="" fwd_guest=""
if [ "$hostfwd_given" = 1 ]; then
    if [[ "$hostfwd" =~ ^([0-9]{1,5}):([0-9]{1,5})$ ]] &&
       (( 10#${BASH_REMATCH[1]} >= 1 && 10#${BASH_REMATCH[1]} <= 65535 &&
          10#${BASH_REMATCH[2]} >= 1 && 10#${BASH_REMATCH[2]} <= 65535 )); then
        fwd_host=$((10#${BASH_REMATCH[1]})) fwd_guest=$((10#${BASH_REMATCH[2]}))
    else
        echo "nested-kvm: --hostfwd '$hostfwd': want HOSTPORT:GUESTPORT, both 1-65535" >&2; exit 2
    fi
fi

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
# --hostfwd: the NIC is a virtio-net PCI device, which needs the virtio PCI
# transport (virtio_pci; modules.dep does not list it as a dependency of
# virtio_net) and the driver (virtio_net, which pulls in net_failover and
# failover).  Either may be built into the kernel instead: nothing to add then.
if [ -n "$hostfwd" ]; then
    for name in virtio_pci virtio_net; do
        m=$(awk -F: -v n="$name" '{ b = $1; sub(/.*\//, "", b) } b ~ "^" n "\\.ko" { print $1; exit }' "$depfile")
        if [ -n "$m" ]; then
            add_module "$m"
        elif grep -q "/$name\.ko" "$KERNEL_MODULES/modules.builtin" 2>/dev/null; then
            log "$name is built into the kernel"
        else
            log "--hostfwd: kernel $KERNEL_VERSION has no $name (module or built-in)"; exit 2
        fi
    done
    # /init reads this to configure the NIC (its presence) and to log the forward.
    echo "$fwd_host $fwd_guest" > "$rootfs/etc/nested-kvm-hostfwd"
fi
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
# Loopback in every run: servers and clients in COMMAND may use 127.0.0.1.
ip link set lo up
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
if [ -f /etc/nested-kvm-hostfwd ]; then
    # --hostfwd: QEMU user networking (slirp) forwards to 10.0.2.15, its
    # default guest address, with the gateway at 10.0.2.2.  Static setup: no
    # DHCP client to wait for.  The NIC appears when virtio_net binds, which
    # may lag the insmod a little under TCG, so wait for it a while.
    read -r fwd_host fwd_guest < /etc/nested-kvm-hostfwd
    nic=""
    for _ in $(seq 100); do
        for d in /sys/class/net/*; do
            [ "${d##*/}" = lo ] || [ ! -e "$d" ] || { nic=${d##*/}; break; }
        done
        [ -n "$nic" ] && break
        sleep 0.1
    done
    if [ -z "$nic" ]; then
        echo "nested-kvm: ERROR: --hostfwd given but no network interface appeared in /sys/class/net after 10 s (virtio_net not bound?)" >&2
        ls /sys/class/net >&2
        dmesg | grep -iE 'virtio|net' | tail -n 20 >&2
        finish 125
    fi
    if ! { ip link set "$nic" up &&
           ip addr add 10.0.2.15/24 dev "$nic" &&
           ip route add default via 10.0.2.2; }; then
        echo "nested-kvm: ERROR: could not configure $nic" >&2
        finish 125
    fi
    echo "nested-kvm: network: $nic 10.0.2.15/24 via 10.0.2.2; host 127.0.0.1:$fwd_host -> guest port $fwd_guest" >&2
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
# -nodefaults leaves the guest without a NIC; --hostfwd adds one.  restrict=on:
# the guest reaches nothing outside QEMU (no host services, no internet); the
# forward listens on the host's loopback only.
net=()
if [ -n "$hostfwd" ]; then
    net=(-nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$fwd_host-:$fwd_guest")
    log "network: host 127.0.0.1:$fwd_host -> guest 10.0.2.15:$fwd_guest (restrict=on)"
fi
log "booting $KERNEL_VERSION under QEMU -accel $accel: -cpu $cpu -smp $smp -m $mem, timeout ${timeout_s}s"
start=$(date +%s.%N)
set +e
# thread=single: see --accel above. stdbuf: line by line, so a long run shows its progress.
timeout -k 5 "$timeout_s" "$QEMU" \
    -accel "$accel" -machine q35 -cpu "$cpu" -smp "$smp" -m "$mem" \
    -kernel "$KERNEL_VMLINUZ" -initrd "$work/initramfs.cpio" -append "$cmdline" \
    -display none -monitor none -no-reboot "${net[@]}" \
    -chardev stdio,id=ser0,signal=off -serial chardev:ser0 \
    -nodefaults </dev/null 2> "$work/qemu.stderr" |
    stdbuf -oL tr -d '\r' | tee "$serial_log"
qemu_rc=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
# QEMU warns about each CPU feature TCG cannot emulate; show anything else.
grep -v 'TCG doesn.t support requested feature' "$work/qemu.stderr" >&2 || true
if [ -n "$hostfwd" ] && grep -q 'Could not set up host forwarding' "$work/qemu.stderr"; then
    log "--hostfwd: is 127.0.0.1:$fwd_host already in use on this host? (ss -ltnp)"
fi
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
