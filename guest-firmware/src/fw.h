/* Internal declarations of lparvisor-firmware (freestanding, integer-only). */
#ifndef FW_FW_H
#define FW_FW_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lparvisor/abi.h"

/* ---- port I/O and other unprivileged instructions (all fine at CPL3 given the TSS bitmap) ---- */
static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

/* MMIO: exactly one access of the given width (a plain mov, which KVM's MMIO emulation and
 * QEMU handle), never split or merged by the compiler. */
static inline uint8_t mmio_read8(uint64_t a)
{
    uint8_t v;
    __asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory");
    return v;
}

static inline uint16_t mmio_read16(uint64_t a)
{
    uint16_t v;
    __asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory");
    return v;
}

static inline uint32_t mmio_read32(uint64_t a)
{
    uint32_t v;
    __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory");
    return v;
}

static inline void mmio_write8(uint64_t a, uint8_t v)
{
    __asm__ volatile("movb %0, (%1)" : : "q"(v), "r"(a) : "memory");
}

static inline void mmio_write16(uint64_t a, uint16_t v)
{
    __asm__ volatile("movw %0, (%1)" : : "r"(v), "r"(a) : "memory");
}

static inline void mmio_write32(uint64_t a, uint32_t v)
{
    __asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(a) : "memory");
}

/* Full fence without SSE2 (mfence): a locked no-op on the stack. */
static inline void full_fence(void)
{
    __asm__ volatile("lock; addl $0, (%%rsp)" ::: "memory", "cc");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c,
                         uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline void barrier(void)
{
    __asm__ volatile("" ::: "memory");
}

/* ---- console.c ---- */
/* Formats one line (printf subset: %s %c %d %u %x with l/ll and a zero-padded width) and writes
 * it to COM1 atomically with respect to the other vCPUs. A '\n' is appended. */
void fw_println(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int fw_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int fw_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* LPV_BOOT_FLAG_CONSOLE_FLOOD: writes numbered lines to COM1 for ever, holding the console. */
void fw_console_flood(void) __attribute__((noreturn));

/* ---- main.c ---- */
void fw_main(const struct lpv_boot_info *bi, uint64_t cpu) __attribute__((noreturn));
/* Stops the LPAR / QEMU through the debug-exit port (never returns). */
void fw_exit(uint8_t code) __attribute__((noreturn));

/* Counts a failure for the final exit code (every FAIL line comes with one). */
void fw_note_failure(void);

/* ---- pci.c: configuration mechanism #1, 32-bit accesses only (ports 0xcf8/0xcfc) ---- */
#define PCI_BDF(dev, fn) ((uint32_t)(((dev) << 3) | (fn))) /* bus 0 */
bool pci_present(void); /* 0xcf8 reads back what was written */
uint32_t pci_read32(uint32_t bdf, uint32_t off);
void pci_write32(uint32_t bdf, uint32_t off, uint32_t v);
/* Calls fn for every function on bus 0 (vendor not 0xffff/0); stops early if fn returns false. */
void pci_scan(bool (*fn)(uint32_t bdf, uint32_t id, void *arg), void *arg);
/* The address of memory BAR `bar` (64-bit BARs combine two registers); false for an I/O BAR, a
 * bad index, or an unassigned (zero) BAR. *is64 tells whether it took two registers. */
bool pci_mem_bar(uint32_t bdf, unsigned bar, uint64_t *addr, bool *is64);
/* The MMIO ranges the firmware's page tables map user-accessible and uncached: by default
 * lparvisor's PCI window; the Multiboot path replaces them with what it mapped. */
void fw_mmio_reset(void);
void fw_mmio_allow(uint64_t base, uint64_t size);
bool fw_mmio_allowed(uint64_t base, uint64_t size);

/* ---- timeouts (TSC; an assumed 5 GHz when tsc_khz is unknown, so waits only get longer) ---- */
void fw_set_tsc_khz(uint64_t khz);
uint64_t fw_deadline_ms(uint64_t ms);
bool fw_expired(uint64_t deadline);

/* ---- virtio.c: modern virtio-pci transport, split virtqueues, polled ---- */
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_MEM 24
#define VIRTIO_F_VERSION_1_BIT 32
#define VIRTIO_BLK_F_RO_BIT 5
#define VIRTIO_BLK_F_FLUSH_BIT 9
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vring_used_elem {
    uint32_t id;
    uint32_t len;
};

struct virtqueue {
    uint16_t index, size;
    volatile struct vring_desc *desc;
    volatile uint16_t *avail; /* flags, idx, ring[size] */
    volatile uint16_t *used; /* flags, idx, then struct vring_used_elem ring[size] */
    uint16_t avail_idx; /* next avail index to publish */
    uint16_t used_seen; /* used entries consumed */
    uint64_t notify_addr;
};

struct virtio_dev {
    uint32_t bdf;
    uint16_t device_id, type;
    char label[8]; /* "00:03.0" */
    uint64_t common, notify, isr, device; /* MMIO addresses of the four structures */
    uint32_t notify_len, device_len;
    uint32_t notify_mult;
    uint64_t device_features, features;
};

/* Finds the first virtio vendor capability of `cfg_type` (1 common, 2 notify, 3 isr, 4 device)
 * without printing anything: its BAR, offset and length. */
bool virtio_pci_find_cap(uint32_t bdf, uint8_t cfg_type, uint8_t *bar, uint32_t *offset,
                         uint32_t *length);
/* Recognises a virtio-pci device (modern id, or transitional id with the virtio capabilities)
 * and fills *d (type, capability addresses); prints a FAIL line for an unusable one. */
bool virtio_pci_probe(uint32_t bdf, uint32_t id, struct virtio_dev *d);
/* Reset, ACKNOWLEDGE, DRIVER, negotiate (VERSION_1 plus `optional` bits the device offers),
 * FEATURES_OK. Then virtio_setup_queue for each queue, then virtio_driver_ok. */
bool virtio_negotiate(struct virtio_dev *d, uint64_t optional);
bool virtio_setup_queue(struct virtio_dev *d, struct virtqueue *q, uint16_t index,
                        uint16_t max_size);
void virtio_driver_ok(struct virtio_dev *d);
void virtio_fail(struct virtio_dev *d); /* sets FAILED in device_status */
uint8_t virtio_config_generation(struct virtio_dev *d);
/* Publishes a chain whose head is `head` and notifies the device. */
void vq_submit(struct virtqueue *q, uint16_t head);
void vq_kick(struct virtqueue *q);
void vq_publish(struct virtqueue *q, uint16_t head); /* without the notify */
/* Takes the next used element if there is one. */
bool vq_poll(struct virtqueue *q, struct vring_used_elem *e);
/* DMA memory from [LPV_FW_DMA_GPA, +LPV_FW_DMA_SIZE), zeroed; NULL when exhausted. */
void *dma_alloc(uint64_t size, uint64_t align);

/* ---- virtio_blk.c / virtio_rng.c ---- */
bool virtio_blk_init(struct virtio_dev *d, const char *name);
void virtio_blk_pass(uint64_t pass); /* one write/flush/read-back pass (vCPU 0) */
void virtio_blk_final(void); /* at the round limit */
void virtio_rng_test(struct virtio_dev *d, const char *name);

/* ---- virtio_mem.c (vCPU 0): the hot-pluggable memory of an expandable LPAR ---- */
/* Memory the page tables map write-back for hot-plug: under lparvisor [storage_bytes,
 * max_storage_bytes) of the boot info (fw_devices_init), under Multiboot the region that
 * multiboot.c mapped. The driver plugs only blocks inside these ranges. */
void fw_hotplug_allow(uint64_t base, uint64_t size);
/* The region [*addr, *addr + *size) of the virtio-mem device at bdf, read from its device
 * configuration without changing the device's state (CPL0 or CPL3, its BAR mapped). */
bool virtio_mem_region(uint32_t bdf, uint64_t *addr, uint64_t *size);
bool virtio_mem_init(struct virtio_dev *d, const char *name, const struct lpv_boot_info *bi);
void virtio_mem_round(uint64_t round); /* between memory rounds: plug, verify, unplug */

/* ---- devices, from fw_main on vCPU 0 ---- */
void fw_devices_init(const struct lpv_boot_info *bi, const char *name);
void fw_devices_round(uint64_t round);
void fw_devices_finish(void);

/* ---- multiboot.c ---- */
void fw_multiboot_main(uint32_t magic, uint32_t mbi) __attribute__((noreturn));

/* ---- libc.c (gcc may emit calls to these) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif
