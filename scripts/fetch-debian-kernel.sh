#!/usr/bin/env bash
# fetch-debian-kernel.sh — download and unpack a Debian kernel image package
# into a cache directory, for booting under QEMU (see scripts/nested-kvm/).
#
# Usage: scripts/fetch-debian-kernel.sh [--flavour cloud|generic] [--print]
#
#   --flavour cloud    linux-image-cloud-amd64 (default; smaller, and Debian's
#                      cloud flavour *does* ship kvm.ko / kvm-amd.ko /
#                      kvm-intel.ko, so it is enough for the nested-KVM harness)
#   --flavour generic  linux-image-amd64 (full kernel; use it if a future cloud
#                      config ever drops the KVM modules — this script checks
#                      and warns if kvm-amd.ko is missing)
#   --print            print the resulting kernel.env on stdout
#
# The meta package is resolved to its versioned package with apt-cache depends
# (e.g. linux-image-cloud-amd64 -> linux-image-6.1.0-56-cloud-amd64), fetched
# with `apt-get download` (no root needed, nothing installed) and extracted
# with `dpkg -x` into
#     ${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}/kernel/<flavour>/
# Results are written to kernel.env in that directory:
#     KERNEL_VERSION=6.1.0-56-cloud-amd64
#     KERNEL_VMLINUZ=<dir>/root/boot/vmlinuz-<ver>
#     KERNEL_VMLINUX=<dir>/vmlinux-<ver>     (uncompressed ELF, if extracted)
#     KERNEL_MODULES=<dir>/root/lib/modules/<ver>
#     KERNEL_PACKAGE=linux-image-<ver>  KERNEL_DEB=<path of the .deb>
# Idempotent: if the .deb and the extracted tree exist, nothing is downloaded.
# The .deb is kept; delete the directory to force a refresh.
set -euo pipefail

flavour=cloud
print=0
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) flavour="$2"; shift 2 ;;
        --flavour=*) flavour="${1#*=}"; shift ;;
        --print) print=1; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "fetch-debian-kernel: unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$flavour" in
    cloud) meta=linux-image-cloud-amd64 ;;
    generic) meta=linux-image-amd64 ;;
    *) echo "fetch-debian-kernel: --flavour must be cloud or generic" >&2; exit 2 ;;
esac

log() { echo "fetch-debian-kernel: $*" >&2; }

cache="${LPARVISOR_CACHE:-$HOME/.cache/lparvisor}/kernel/$flavour"
mkdir -p "$cache"
envfile="$cache/kernel.env"

# Fast path: already done.
if [ -f "$envfile" ]; then
    # shellcheck disable=SC1090
    . "$envfile"
    if [ -f "${KERNEL_VMLINUZ:-/nonexistent}" ] && [ -s "${KERNEL_MODULES:-/nonexistent}/modules.dep" ]; then
        log "cached: $KERNEL_PACKAGE in $cache"
        [ "$print" = 1 ] && cat "$envfile"
        exit 0
    fi
fi

pkg=$(apt-cache depends "$meta" 2>/dev/null |
      awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    log "cannot resolve $meta with apt-cache depends (run apt-get update?)"
    exit 1
fi
ver=${pkg#linux-image-}
log "$meta -> $pkg"

deb=$(ls "$cache"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    log "downloading $pkg (tens of MB) into $cache"
    (cd "$cache" && apt-get download -q "$pkg" >&2)
    deb=$(ls "$cache"/"${pkg}"_*.deb | head -n1)
fi

root="$cache/root"
if [ ! -f "$root/boot/vmlinuz-$ver" ]; then
    log "extracting $(basename "$deb")"
    rm -rf "$root.tmp"
    dpkg -x "$deb" "$root.tmp"
    rm -rf "$root"
    mv "$root.tmp" "$root"
fi

vmlinuz="$root/boot/vmlinuz-$ver"
modules="$root/lib/modules/$ver"
if ! find "$modules" -name 'kvm-amd.ko*' | grep -q .; then
    log "WARNING: $pkg has no kvm-amd module; use --flavour generic for the nested-KVM harness"
fi

# Debian's package does not ship modules.dep (depmod runs in postinst).
# Generate it: with depmod -b when kmod is installed, otherwise from each
# module's .modinfo "depends=" string (direct dependencies only; consumers
# such as nested-kvm/run.sh resolve them recursively).
if [ ! -s "$modules/modules.dep" ]; then
    if command -v depmod >/dev/null 2>&1 || [ -x /sbin/depmod ]; then
        log "generating modules.dep with depmod"
        PATH="$PATH:/sbin:/usr/sbin" depmod -b "$root" "$ver"
    else
        log "generating modules.dep from .modinfo (no depmod on this host)"
        (
            cd "$modules"
            declare -A path_of
            while read -r m; do
                [ -n "$m" ] || continue
                b=${m##*/}; b=${b%%.ko*}; b=${b//-/_}
                path_of[$b]=$m
            done < modules.order
            while read -r m; do
                [ -n "$m" ] && [ -f "$m" ] || continue
                case "$m" in
                    *.ko.xz)  cat_="xz -dc" ;;
                    *.ko.zst) cat_="zstd -dc" ;;
                    *.ko.gz)  cat_="gzip -dc" ;;
                    *)        cat_="cat" ;;
                esac
                d=$($cat_ "$m" | LC_ALL=C grep -ao 'depends=[^[:cntrl:]]*' | head -n1 | cut -d= -f2 || true)
                line="$m:"
                for dep in ${d//,/ }; do
                    dep=${dep//-/_}
                    [ -n "${path_of[$dep]:-}" ] && line="$line ${path_of[$dep]}"
                done
                echo "$line"
            done < modules.order > modules.dep.tmp
            mv modules.dep.tmp modules.dep
        )
    fi
fi

# Optional: uncompressed vmlinux (like linux/scripts/extract-vmlinux): find the
# compressed payload's magic inside the bzImage and decompress from there.
vmlinux="$cache/vmlinux-$ver"
if [ ! -s "$vmlinux" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    try_decomp() { # magic-as-grep-pattern decompressor...
        local magic="$1"; shift
        local pos
        for pos in $(LC_ALL=C grep -abo -P "$magic" "$vmlinuz" 2>/dev/null | cut -d: -f1 | head -n 8); do
            tail -c +"$((pos + 1))" "$vmlinuz" | "$@" > "$tmp/vmlinux" 2>/dev/null || true
            if [ -s "$tmp/vmlinux" ] && [ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
                mv "$tmp/vmlinux" "$vmlinux"
                return 0
            fi
        done
        return 1
    }
    # Debian 12 kernels use CONFIG_KERNEL_LZ4 (legacy lz4 frame, magic 02 21 4C 18).
    if command -v lz4 >/dev/null && try_decomp '\x02\x21\x4C\x18' lz4 -dc; then :
    elif command -v xz >/dev/null && try_decomp '\xFD7zXZ\x00' xz -dc; then :
    elif command -v zstd >/dev/null && try_decomp '\x28\xB5\x2F\xFD' zstd -dc; then :
    elif try_decomp '\x1F\x8B\x08' gzip -dc; then :
    else
        log "note: could not extract vmlinux (need lz4/xz/zstd/gzip matching the bzImage); skipping"
        vmlinux=""
    fi
    [ -n "$vmlinux" ] && log "extracted uncompressed $vmlinux"
fi

cat > "$envfile" <<ENV
KERNEL_FLAVOUR=$flavour
KERNEL_PACKAGE=$pkg
KERNEL_VERSION=$ver
KERNEL_DEB=$deb
KERNEL_VMLINUZ=$vmlinuz
KERNEL_VMLINUX=$vmlinux
KERNEL_MODULES=$modules
ENV
log "wrote $envfile"
[ "$print" = 1 ] && cat "$envfile"
exit 0
