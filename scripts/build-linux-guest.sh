#!/usr/bin/env bash
# build-linux-guest.sh — build the Linux guest for lparvisor from Debian packages only: the
# Debian cloud kernel (scripts/fetch-debian-kernel.sh) and an initramfs with a static busybox,
# the kernel's virtio modules, an /init and the workload (guest-linux/workload.c).
#
# Usage: scripts/build-linux-guest.sh [--flavour cloud|generic] [--force] [--print]
#
#   --flavour F   kernel flavour for fetch-debian-kernel.sh (default cloud)
#   --force       rebuild the initramfs even if its inputs did not change
#   --print       print the resulting linux-guest.env on stdout
#
# Output, in ${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}/linux-guest/:
#   initramfs.cpio.gz   the initramfs (newc cpio, gzip)
#   linux-guest.env     LINUX_KERNEL=<uncompressed vmlinux (ELF; faster to boot under PVM)>
#                       LINUX_BZIMAGE=<vmlinuz>  LINUX_INITRD=<initramfs.cpio.gz>
#                       LINUX_KERNEL_VERSION=...  LINUX_CMDLINE=<a suggested command line>
# A second run rebuilds nothing unless an input changed (the kernel package, busybox, the
# workload source, this script): it compares a hash of the inputs with the one it stored.
#
# The guest's /init prints lines that tests look for:
#   LPARVISOR-GUEST: init started | kernel <ver> | MemTotal: <n> kB | cpus <n>
#   LPARVISOR-GUEST: modules loaded | pci <slot> vendor <id> device <id> class <c> driver <d>
#   LPARVISOR-GUEST: MemTotal: <n> kB (again each time virtio-mem changes it)
#   LPARVISOR-GUEST: workload exit <rc> | powering off
# then the workload's LPARVISOR-WORKLOAD: lines, and powers off (poweroff -f: ACPI S5).
# Kernel command line knobs (the kernel hands var=value to /init's environment):
#   LPV_MIB=<MiB>      memory the workload fills and verifies (default 64)
#   LPV_LOOP=<rounds>  loop mode for live moves (0: until powered off); default: one pass
#   LPV_DISK=<dev>     disk for the disk test (default /dev/vda); LPV_DISK=none skips it
#   LPV_GROW_MIB=<MiB> after EXPAND (virtio-mem) grows MemTotal, a second workload of that size
#   LPV_SHELL=1        a shell on the console instead of the power-off at the end
#
# Needs: apt-get (download only, no root), dpkg -x, cpio, gzip, gcc (static libc), and
# xz/zstd if the modules are compressed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
flavour=cloud force=0 print=0
usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) flavour="$2"; shift 2 ;;
        --flavour=*) flavour="${1#*=}"; shift ;;
        --force) force=1; shift ;;
        --print) print=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-linux-guest: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "build-linux-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in cpio gzip gcc dpkg sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install ${tool/sha256sum/coreutils})"
done
workload_src="$repo/guest-linux/workload.c"
[ -f "$workload_src" ] || die "missing $workload_src"

cache="${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}"
out="$cache/linux-guest"
mkdir -p "$out"
envfile="$out/linux-guest.env"
initrd="$out/initramfs.cpio.gz"

# --- kernel ----------------------------------------------------------------------------------
log "kernel: scripts/fetch-debian-kernel.sh --flavour $flavour"
"$here/fetch-debian-kernel.sh" --flavour "$flavour" >&2 || die "fetching the Debian kernel failed"
# shellcheck disable=SC1090
. "$cache/kernel/$flavour/kernel.env"
[ -f "$KERNEL_VMLINUZ" ] || die "no kernel at $KERNEL_VMLINUZ"
depfile="$KERNEL_MODULES/modules.dep"
[ -s "$depfile" ] || die "no modules.dep in $KERNEL_MODULES"

# --- busybox (static) ------------------------------------------------------------------------
is_static() { [ -x "$1" ] && ! ldd "$1" >/dev/null 2>&1; }
busybox=""
if dpkg -s busybox-static >/dev/null 2>&1; then
    for b in /bin/busybox /usr/bin/busybox; do is_static "$b" && { busybox=$b; break; }; done
fi
if [ -z "$busybox" ]; then
    bbdir="$cache/busybox-static"
    if ! is_static "$bbdir/root/bin/busybox"; then
        log "busybox-static is not installed; downloading the package (apt-get download)"
        mkdir -p "$bbdir"
        (cd "$bbdir" && rm -f busybox-static_*.deb && apt-get download -q busybox-static >&2) ||
            die "busybox-static is not installed and could not be downloaded: apt-get install busybox-static"
        rm -rf "$bbdir/root"
        dpkg -x "$bbdir"/busybox-static_*.deb "$bbdir/root"
    fi
    busybox="$bbdir/root/bin/busybox"
    is_static "$busybox" || die "no static busybox in the busybox-static package ($busybox)"
fi
log "busybox: $busybox"

# --- modules (with their dependencies from modules.dep, dependencies first) --------------------
wanted=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
        virtio_rng virtio_mem)
declare -A seen=()
modlist=()
add_module() { # path relative to the modules directory, as in modules.dep
    local m="$1" deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    deps=$(awk -F': *' -v m="$m" '$1 == m { print $2; exit }' "$depfile")
    for d in $deps; do add_module "$d"; done
    modlist+=("$m")
}
for name in "${wanted[@]}"; do
    # File names use - or _ interchangeably (virtio-rng.ko is the module virtio_rng).
    path=$(awk -F: -v n="$name" '{ f = $1; sub(/.*\//, "", f); sub(/\.ko.*/, "", f); gsub(/-/, "_", f)
                                    if (f == n) { print $1; exit } }' "$depfile")
    if [ -n "$path" ]; then
        add_module "$path"
    elif grep -qE "/${name//_/[-_]}\.ko$" "$KERNEL_MODULES/modules.builtin" 2>/dev/null; then
        log "module $name is built into the kernel"
    else
        log "WARNING: no module $name in $KERNEL_VERSION (neither a module nor built in)"
    fi
done

# --- everything that decides the output, hashed ------------------------------------------------
inputs=$(
    {
        echo "kernel $KERNEL_PACKAGE $(stat -c %s "$KERNEL_VMLINUZ")"
        sha256sum "$busybox" "$workload_src" "$0" | cut -d' ' -f1
        gcc --version | head -n1
        printf '%s\n' "${modlist[@]}"
    } | sha256sum | cut -d' ' -f1
)
if [ "$force" = 0 ] && [ -s "$initrd" ] && [ -s "$envfile" ] &&
   [ "$(cat "$out/inputs.sha256" 2>/dev/null)" = "$inputs" ]; then
    log "up to date: $initrd"
    [ "$print" = 1 ] && cat "$envfile"
    exit 0
fi

work=$(mktemp -d "$out/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,lib/modules,etc}
cp "$busybox" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/sh"

: > "$rootfs/lib/modules/load.list"
for m in "${modlist[@]}"; do
    name=$(basename "$m"); name=${name%%.ko*}.ko
    case "$m" in
        *.ko.xz) command -v xz >/dev/null || die "xz is not installed (apt-get install xz-utils)"
                 xz -dc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *.ko.zst) command -v zstd >/dev/null || die "zstd is not installed (apt-get install zstd)"
                  zstd -qdc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *.ko.gz) gzip -dc "$KERNEL_MODULES/$m" > "$rootfs/lib/modules/$name" ;;
        *) cp "$KERNEL_MODULES/$m" "$rootfs/lib/modules/$name" ;;
    esac
    echo "$name" >> "$rootfs/lib/modules/load.list"
done
log "modules: $(tr '\n' ' ' < "$rootfs/lib/modules/load.list")"

# --- the workload ------------------------------------------------------------------------------
log "compiling guest-linux/workload.c (gcc -static -O2)"
gcc -static -O2 -Wall -Wextra -o "$rootfs/bin/workload" "$workload_src" ||
    die "gcc -static failed (is the static C library installed? apt-get install libc6-dev)"
strip "$rootfs/bin/workload" 2>/dev/null || true

# --- /init -------------------------------------------------------------------------------------
cat > "$rootfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
say() { echo "LPARVISOR-GUEST: $*"; }
say "init started after $(cut -d' ' -f1 /proc/uptime)s"
say "kernel $(uname -r)"
say "$(grep MemTotal /proc/meminfo)"
say "cpus $(grep -c ^processor /proc/cpuinfo)"
while read -r mod; do
    insmod "/lib/modules/$mod" || say "FAIL insmod $mod"
done < /lib/modules/load.list
say "modules loaded"
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    drv=none
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    say "pci ${d##*/} vendor $(cat "$d/vendor") device $(cat "$d/device") class $(cat "$d/class") driver $drv"
done
disk=${LPV_DISK:-/dev/vda}
if [ "$disk" != none ]; then
    # virtio-blk (0x1af4:0x1001 or 0x1042) probes asynchronously: give its node a moment.
    if grep -qE '0x1001|0x1042' /sys/bus/pci/devices/*/device 2>/dev/null; then
        i=0
        while [ ! -b "$disk" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    [ -b "$disk" ] && say "disk $disk $(cat /sys/class/block/${disk##*/}/size 2>/dev/null) sectors"
    set -- -d "$disk"
else
    set -- -D
fi
[ -n "${LPV_LOOP:-}" ] && set -- "$@" -l "$LPV_LOOP"
# EXPAND: the virtio-mem driver adds what the host plugs (onlined as the command line's
# memhp_default_state says). Report each new MemTotal; with LPV_GROW_MIB, run a second workload
# of that size once the memory grew (its lines say LPARVISOR-GROWN:).
if ls -d /sys/bus/virtio/drivers/virtio_mem/virtio* >/dev/null 2>&1; then
    (
        last=$(grep MemTotal /proc/meminfo)
        grown=0
        while sleep 0.5; do
            now=$(grep MemTotal /proc/meminfo)
            [ "$now" = "$last" ] && continue
            last=$now
            say "$now"
            if [ -n "${LPV_GROW_MIB:-}" ] && [ $grown = 0 ]; then
                grown=1
                /bin/workload -m "$LPV_GROW_MIB" -l 1 -D | sed 's/^LPARVISOR-WORKLOAD:/LPARVISOR-GROWN:/'
            fi
        done
    ) &
fi
/bin/workload -m "${LPV_MIB:-64}" "$@"
say "workload exit $?"
if [ "${LPV_SHELL:-0}" = 1 ]; then
    say "shell (exit to power off)"
    setsid cttyhack sh
fi
say "powering off"
sync
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
INIT
chmod +x "$rootfs/init"

# --- archive: sorted names, fixed times, gzip -n: the same inputs give the same bytes ------------
find "$rootfs" -exec touch -h -d @0 {} +
reproducible=""
cpio --help 2>/dev/null | grep -q -- --reproducible && reproducible=--reproducible
(cd "$rootfs" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet $reproducible) |
    gzip -n -9 > "$work/initramfs.cpio.gz"
mv "$work/initramfs.cpio.gz" "$initrd"
log "initramfs: $initrd ($(du -h "$initrd" | cut -f1))"

cat > "$envfile" <<ENV
LINUX_KERNEL=${KERNEL_VMLINUX:-}
LINUX_BZIMAGE=$KERNEL_VMLINUZ
LINUX_INITRD=$initrd
LINUX_KERNEL_VERSION=$KERNEL_VERSION
LINUX_CMDLINE="console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 nokaslr rdinit=/init"
ENV
echo "$inputs" > "$out/inputs.sha256"
[ -n "${KERNEL_VMLINUX:-}" ] || log "note: no uncompressed vmlinux was extracted; LINUX_KERNEL is empty (use LINUX_BZIMAGE)"
log "wrote $envfile"
[ "$print" = 1 ] && cat "$envfile"
exit 0
