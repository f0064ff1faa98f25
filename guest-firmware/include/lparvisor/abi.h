/*
 * The contract between lparvisor and the guest firmware it starts: guest-physical layout,
 * boot-info block, I/O ports and the paravirtual storage-key request. Plain C so that both the
 * freestanding firmware and the C++ hypervisor include the same definitions.
 * docs/paravirt-interface.md explains each item.
 */
#ifndef LPARVISOR_ABI_H
#define LPARVISOR_ABI_H

#include <stdint.h>

/* ---- guest-physical layout of a firmware LPAR (all below 2 MiB is "system area") ---- */
#define LPV_GDT_GPA 0x1000ull /* GDT: null, kernel code/data, user code/data, TSS */
#define LPV_TSS_GPA 0x2000ull /* 64-bit TSS followed by its I/O permission bitmap */
#define LPV_BOOT_INFO_GPA 0x6000ull /* struct lpv_boot_info */
#define LPV_PAGE_TABLE_GPA 0x10000ull /* PML4, then PDPT, then one PD per GiB (2 MiB pages) */
#define LPV_PAGE_TABLE_END 0x80000ull
#define LPV_IMAGE_GPA 0x100000ull /* firmware ELF PT_LOAD segments live in [1 MiB, 1.5 MiB) */
#define LPV_IMAGE_END 0x180000ull
#define LPV_STACK_TOP 0x200000ull /* vCPU i's stack top is LPV_STACK_TOP - i * LPV_STACK_SIZE */
#define LPV_STACK_SIZE 0x8000ull
#define LPV_MAX_VCPUS 8
#define LPV_TEST_AREA_GPA 0x200000ull /* the firmware's pattern area: 2 MiB .. storage end */
/* The firmware's DMA area: its virtqueues and I/O buffers, between the image and the lowest
 * vCPU stack (LPV_STACK_TOP - LPV_MAX_VCPUS * LPV_STACK_SIZE = 0x1c0000). Devices read and
 * write here; the pattern area is never a DMA target. */
#define LPV_FW_DMA_GPA 0x180000ull
#define LPV_FW_DMA_SIZE 0x40000ull

/* GDT selectors (RPL 3 for the user ones). */
#define LPV_SEL_KERNEL_CODE 0x08
#define LPV_SEL_KERNEL_DATA 0x10
#define LPV_SEL_USER_DATA 0x1b
#define LPV_SEL_USER_CODE 0x23
#define LPV_SEL_TSS 0x28

/* ---- I/O ports (opened in the TSS I/O bitmap for the CPL3 firmware) ---- */
#define LPV_PORT_COM1 0x3f8 /* 8250 UART, 8 ports */
#define LPV_PORT_DEBUG_EXIT \
    0x501 /* byte write: the LPAR stops with "guest exit CODE" (QEMU's isa-debug-exit port) */
#define LPV_PORT_STORAGE_KEY \
    0x510 /* 32-bit write: guest-physical address of a struct lpv_skey_request */
#define LPV_PORT_PCI_CONFIG \
    0xcf8 /* PCI configuration mechanism #1: address 0xcf8, data 0xcfc-0xcff */
#define LPV_PORT_I8042_COMMAND 0x64 /* byte write 0xfe: pulse the reset line (a guest reboot) */

/* ---- PCI: every LPAR has a host bridge at 00:00.0 and its virtio-pci devices from 00:01.0 on.
 * Their memory BARs lie in this window, which is never RAM: an LPAR's storage ends below it. The
 * hypervisor assigns the BARs (device in slot N: LPV_PCI_MMIO_GPA + N * LPV_PCI_BAR_STRIDE) and
 * the firmware's page tables map the window user-accessible and uncached. ---- */
#define LPV_PCI_MMIO_GPA 0xe0000000ull
#define LPV_PCI_MMIO_SIZE 0x10000000ull
#define LPV_PCI_BAR_STRIDE 0x100000ull
#define LPV_MAX_STORAGE LPV_PCI_MMIO_GPA /* 3.5 GiB: storage must end below the PCI window */

/* ---- boot info: at LPV_BOOT_INFO_GPA; RDI holds its address at entry, RSI the vCPU index ---- */
#define LPV_BOOT_MAGIC 0x3152535641504c4cull /* "LLPAVSR1" little-endian */
#define LPV_BOOT_VERSION 1
#define LPV_BOOT_FLAG_STORAGE_KEYS (1u << 0) /* the storage-key port is served */
#define LPV_BOOT_FLAG_PCI \
    (1u << 1) /* PCI config mechanism #1 (0xcf8-0xcff) is served:
                                              * the firmware scans bus 0 and drives its virtio
                                              * devices. Without it the firmware never touches
                                              * those ports (an unserved port stops the LPAR). */
/* Tests of the host's console limits: vCPU 0 writes its console without end (100-byte lines,
 * every 16th line 8 KiB long) instead of running its rounds; the other vCPUs park. */
#define LPV_BOOT_FLAG_CONSOLE_FLOOD (1u << 2)
/* Tests of the LPAR's on_reboot and on_crash actions: when round_limit is reached, instead of
 * the debug exit the firmware reboots (0xfe to LPV_PORT_I8042_COMMAND), or executes UD2, which
 * with no IDT is a triple fault (KVM_EXIT_SHUTDOWN). */
#define LPV_BOOT_FLAG_REBOOT_AT_END (1u << 3)
#define LPV_BOOT_FLAG_TRIPLE_FAULT_AT_END (1u << 4)
/* Benchmarks: every vCPU prints "progress bytes=B max_gap_us=G cpu=C" about every 100 ms of TSC
 * time (docs/paravirt-interface.md, "Progress lines"). Needs tsc_khz. */
#define LPV_BOOT_FLAG_REPORT_PROGRESS (1u << 5)
#define LPV_NAME_MAX 32

struct lpv_boot_info {
    uint64_t magic;
    uint32_t version;
    uint32_t vcpu_count;
    uint64_t storage_bytes; /* guest RAM is [0, storage_bytes) */
    uint64_t test_area_gpa; /* first byte of the pattern area */
    uint64_t tsc_khz; /* 0 if unknown */
    uint64_t rewrite_pages_per_sec; /* 0: rewrite as fast as possible */
    uint64_t working_set_bytes; /* 0: every round rewrites the whole area */
    uint32_t flags; /* LPV_BOOT_FLAG_* */
    uint32_t reserved;
    char name[LPV_NAME_MAX]; /* NUL-terminated LPAR name */
    /* Fields below were added compatibly at the end; a hypervisor that does not know them
     * leaves them zero. */
    uint64_t round_limit; /* 0: run forever; N: after round N on every vCPU the
                                     * firmware writes 0 (no FAIL line) or 1 to LPV_PORT_DEBUG_EXIT */
    uint64_t max_storage_bytes; /* 0 or <= storage_bytes: nothing above the storage is mapped.
                                     * Else the page tables also map [storage_bytes,
                                     * max_storage_bytes) (write-back, user): hot-pluggable memory
                                     * (a virtio-mem region) that the firmware touches only while
                                     * its blocks are plugged (unplugged ones may be unbacked). */
};

/* ---- the firmware's memory pattern ----
 * The 64-bit word at guest-physical address `gpa` (8-byte aligned) of generation `gen` is
 * lpv_pattern_word(gpa, gen, lpv_pattern_seed(name)). The test area's words outside the
 * working set and every plugged virtio-mem block keep generation 0. Plain C that also compiles
 * as C++ (a host-side checker can include it). */
#define LPV_PATTERN_MUL 0x9E3779B97F4A7C15ull

/* FNV-1a 64 of the name (at most LPV_NAME_MAX bytes), then the murmur3 finaliser so that
 * similar names differ in many bits. */
static inline uint64_t lpv_pattern_seed(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < LPV_NAME_MAX && name[i] != '\0'; i++) {
        h ^= (unsigned char)name[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static inline uint64_t lpv_pattern_word(uint64_t gpa, uint64_t gen, uint64_t seed)
{
    return (gpa * LPV_PATTERN_MUL) ^ (gen << 48) ^ seed;
}

/* ---- storage keys: one byte per 4 KiB frame, s390 layout ---- */
#define LPV_KEY_ACCESS_MASK 0xf0 /* access-control key, bits 7-4 */
#define LPV_KEY_FETCH 0x08 /* fetch protection */
#define LPV_KEY_REFERENCE 0x04 /* reference bit */
#define LPV_KEY_CHANGE 0x02 /* change bit */
#define LPV_KEY_VALID_MASK 0xfe

enum lpv_skey_op {
    LPV_SKEY_SET_RANGE = 1, /* every page in the range gets `key` */
    LPV_SKEY_SET_EACH = 2, /* page i gets byte i of the buffer */
    LPV_SKEY_GET_EACH = 3, /* byte i of the buffer gets page i's key */
};

enum lpv_skey_status {
    LPV_SKEY_OK = 0,
    LPV_SKEY_BAD_OP = -1,
    LPV_SKEY_BAD_RANGE = -2, /* misaligned, empty, or outside the LPAR's storage */
    LPV_SKEY_BAD_BUFFER = -3, /* buffer outside the LPAR's storage */
    LPV_SKEY_BAD_KEY = -4, /* bit 0 set */
};

/* Lives in guest memory below 4 GiB; the 32-bit write to LPV_PORT_STORAGE_KEY carries its address.
 * One exit serves the whole range (an exit costs about 25 us on PVM). */
struct lpv_skey_request {
    uint32_t op; /* enum lpv_skey_op */
    int32_t status; /* written by the hypervisor: enum lpv_skey_status */
    uint64_t first_gpa; /* 4 KiB aligned */
    uint64_t page_count; /* > 0 */
    uint64_t key; /* SET_RANGE only */
    uint64_t buffer_gpa; /* SET_EACH / GET_EACH: page_count bytes */
};

/* ---- the firmware's virtio-blk test: the content of the disk after pass P ----
 * The firmware writes 4 KiB blocks (LPV_DISK_BLOCK_BYTES, 8 sectors) over the first
 * min(capacity, LPV_DISK_TEST_BYTES) of the disk; 64-bit little-endian word w of block b after
 * pass p is lpv_disk_word(name, b, p, w). Passes count from 1 (pass P runs after memory round
 * P). Writes go one at a time in block order, so while pass P+1 is being written, blocks
 * [0, k) hold pass P+1 and the rest pass P. Plain C that also compiles as C++ (the host-side
 * checker includes it). */
#define LPV_DISK_BLOCK_BYTES 4096u
#define LPV_DISK_WORDS_PER_BLOCK (LPV_DISK_BLOCK_BYTES / 8u)
#define LPV_DISK_TEST_BYTES 0x400000ull /* 4 MiB */

static inline uint64_t lpv_disk_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* FNV-1a 64 of the NUL-terminated name (at most LPV_NAME_MAX bytes). */
static inline uint64_t lpv_disk_name_hash(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned i = 0; i < LPV_NAME_MAX && name[i] != '\0'; i++) {
        const unsigned char c = (unsigned char)name[i];
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The per-block part: everything but the word index. */
static inline uint64_t lpv_disk_block_seed(uint64_t name_hash, uint64_t block, uint64_t pass)
{
    return lpv_disk_mix(name_hash ^ lpv_disk_mix(block * 0x9e3779b97f4a7c15ull + pass));
}

static inline uint64_t lpv_disk_word_seeded(uint64_t block_seed, uint64_t word_index)
{
    return block_seed ^ ((word_index + 1) * 0xd1b54a32d192ed03ull);
}

static inline uint64_t lpv_disk_word(const char *name, uint64_t block, uint64_t pass,
                                     uint64_t word_index)
{
    return lpv_disk_word_seeded(lpv_disk_block_seed(lpv_disk_name_hash(name), block, pass),
                                word_index);
}

#endif
