/*
 * The Multiboot path (QEMU -kernel): entry.S has switched to 64-bit mode at CPL0 with identity
 * page tables for the first 4 GiB. Build a struct lpv_boot_info from the multiboot info and the
 * command line, find the TSC frequency, and run the same fw_main as under lparvisor.
 *
 * Command line (after QEMU's leading kernel file name), all optional:
 *   name=NAME  pages_per_sec=N  working_set_mib=N  rounds=N  cpl3=1  report_progress=1
 * report_progress=1 sets LPV_BOOT_FLAG_REPORT_PROGRESS (progress lines, docs/paravirt-interface.md).
 * cpl3=1 is a self-test of lparvisor's entry conditions: the firmware builds the ABI's GDT
 * layout, a TSS whose I/O bitmap opens only the ABI's ports, copies the boot info to
 * LPV_BOOT_INFO_GPA and enters lpv_entry64 at CPL3 by iretq, as lparvisor starts vCPU 0.
 *
 * PCI: the BARs are wherever the BIOS (SeaBIOS under QEMU) assigned them. Before anything runs
 * the firmware maps [storage end, 4 GiB) uncached and user-accessible (where 32-bit BARs live)
 * and every memory BAR above 4 GiB the same way, records those ranges as the MMIO the drivers
 * may touch, and sets LPV_BOOT_FLAG_PCI so that fw_main scans bus 0 as under lparvisor. A
 * virtio-mem device's region (QEMU puts it above 4 GiB) is mapped write-back, user-accessible
 * (at most HOTPLUG_MAP_MAX of it) and recorded as hot-plug memory for the virtio-mem driver.
 */
#include "fw.h"
#include "layout.h"

#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)
#define MBI_OFF_FLAGS 0
#define MBI_OFF_MEM_UPPER 8 /* KiB above 1 MiB */
#define MBI_OFF_CMDLINE 16

#define PIT_HZ 1193182ull
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define CALIBRATE_PIT_TICKS 23864u /* 20 ms */

static struct lpv_boot_info mb_boot_info;

/* ---- page tables for the MMIO mappings (entry.S built the 4 GiB identity map) ---- */
#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_PWT 0x8ull
#define PTE_PCD 0x10ull
#define PTE_PS 0x80ull
#define PTE_ADDR 0x000ffffffffff000ull
#define PAGE_2M 0x200000ull
#define GIB (1ull << 30)
#define PT_POOL_PAGES 16
#define BAR_MAP_MAX GIB /* map at most this much of one BAR */
#define HOTPLUG_MAP_MAX (8 * GIB) /* map at most this much of a virtio-mem region */
#define VIRTIO_MEM_PCI_ID 0x10581af4u /* vendor 0x1af4, modern device id 0x1040 + 24 */

static uint64_t pt_pool[PT_POOL_PAGES][512] __attribute__((aligned(4096)));
static uint32_t pt_pool_used;

static uint64_t *pt_next(uint64_t *table, uint32_t idx)
{
    if (!(table[idx] & PTE_P)) {
        if (pt_pool_used == PT_POOL_PAGES)
            return NULL;
        uint64_t *t = pt_pool[pt_pool_used++];
        memset(t, 0, 4096);
        table[idx] = (uint64_t)(uintptr_t)t | PTE_P | PTE_RW | PTE_US;
    }
    if (table[idx] & PTE_PS)
        return NULL;
    return (uint64_t *)(uintptr_t)(table[idx] & PTE_ADDR);
}

/* Maps the 2 MiB page at `addr` identically: user, writable, with `cache` (PWT|PCD for
 * uncached, 0 for write-back). CPL0 only. */
static bool map_2m(uint64_t addr, uint64_t cache)
{
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & PTE_ADDR);
    uint64_t *pdpt = pt_next(pml4, (uint32_t)((addr >> 39) & 511));
    uint64_t *pd = pdpt ? pt_next(pdpt, (uint32_t)((addr >> 30) & 511)) : NULL;
    if (!pd)
        return false;
    pd[(addr >> 21) & 511] = (addr & ~(PAGE_2M - 1)) | PTE_P | PTE_RW | PTE_US | cache | PTE_PS;
    return true;
}

static bool map_range(uint64_t base, uint64_t size, uint64_t cache)
{
    for (uint64_t a = base & ~(PAGE_2M - 1); a < base + size; a += PAGE_2M)
        if (!map_2m(a, cache))
            return false;
    return true;
}

static bool map_uc(uint64_t base, uint64_t size)
{
    return map_range(base, size, PTE_PWT | PTE_PCD);
}

/* A virtio-mem device: map its region write-back (after its BARs, to read the region from its
 * device configuration) so that the driver can use the blocks it plugs. */
static void map_virtio_mem(uint32_t bdf)
{
    pci_write32(bdf, 0x04, (pci_read32(bdf, 0x04) & 0xffff) | 0x2u); /* memory decoding on */
    uint64_t addr, size;
    if (!virtio_mem_region(bdf, &addr, &size)) {
        fw_println("multiboot: virtio-mem 00:%02x.%x: region not readable", (bdf >> 3) & 31,
                   bdf & 7);
        return;
    }
    const uint64_t end = addr + size;
    uint64_t lo = (addr + PAGE_2M - 1) & ~(PAGE_2M - 1), hi = end & ~(PAGE_2M - 1);
    if (hi > lo && hi - lo > HOTPLUG_MAP_MAX)
        hi = lo + HOTPLUG_MAP_MAX;
    if (hi <= lo || lo != addr || !map_range(lo, hi - lo, 0)) {
        fw_println("multiboot: virtio-mem 00:%02x.%x: region 0x%lx+0x%lx not mapped",
                   (bdf >> 3) & 31, bdf & 7, addr, size);
        return;
    }
    fw_hotplug_allow(lo, hi - lo);
    fw_println("multiboot: mapped virtio-mem region of 00:%02x.%x at 0x%lx+0x%lx", (bdf >> 3) & 31,
               bdf & 7, lo, hi - lo);
}

/* Sizes 64-bit memory BAR `bar` (decoding off meanwhile); 0 if it does not answer. CPL0. */
static uint64_t bar64_size(uint32_t bdf, unsigned bar)
{
    const uint32_t off = 0x10 + 4 * bar;
    const uint32_t cmd = pci_read32(bdf, 0x04) & 0xffff;
    pci_write32(bdf, 0x04, cmd & ~0x2u);
    const uint32_t lo = pci_read32(bdf, off), hi = pci_read32(bdf, off + 4);
    pci_write32(bdf, off, 0xffffffffu);
    pci_write32(bdf, off + 4, 0xffffffffu);
    const uint64_t mask =
        ((uint64_t)pci_read32(bdf, off + 4) << 32) | (pci_read32(bdf, off) & ~0xfu);
    pci_write32(bdf, off, lo);
    pci_write32(bdf, off + 4, hi);
    pci_write32(bdf, 0x04, cmd);
    return mask ? ~mask + 1 : 0;
}

/* Maps the memory BARs that lie above 4 GiB (those below are in [storage, 4 GiB) already). */
static bool map_high_bars(uint32_t bdf, uint32_t id, void *arg)
{
    (void)arg;
    if ((pci_read32(bdf, 0x0c) >> 16) & 0x7f) /* not a type-0 header (a bridge): skip */
        return true;
    for (unsigned bar = 0; bar < 6; bar++) {
        uint64_t addr;
        bool is64 = false;
        if (pci_mem_bar(bdf, bar, &addr, &is64) && is64 && addr >= 4 * GIB) {
            uint64_t size = bar64_size(bdf, bar);
            if (size == 0 || size > BAR_MAP_MAX)
                size = size ? BAR_MAP_MAX : PAGE_2M;
            if (map_uc(addr, size)) {
                fw_mmio_allow(addr, size);
                fw_println("multiboot: mapped BAR %u of 00:%02x.%x at 0x%lx+0x%lx uncached", bar,
                           (bdf >> 3) & 31, bdf & 7, addr, size);
            } else {
                fw_println("multiboot: no page-table space to map BAR %u of 00:%02x.%x at 0x%lx",
                           bar, (bdf >> 3) & 31, bdf & 7, addr);
            }
        }
        if (is64)
            bar++;
    }
    if (id == VIRTIO_MEM_PCI_ID)
        map_virtio_mem(bdf);
    return true;
}

static void map_pci_mmio(uint64_t storage)
{
    fw_mmio_reset();
    if (map_uc(storage, 4 * GIB - storage))
        fw_mmio_allow(storage, 4 * GIB - storage);
    if (pci_present())
        pci_scan(map_high_bars, NULL);
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0\n\tmov %0, %%cr3" : "=r"(cr3) : : "memory"); /* flush the TLB */
}

static bool want_cpl3;

/* ---- cpl3=1: the lparvisor entry state, built here ---- */
#define TSS_IOMAP_OFFSET 104u
struct cpl3_tss {
    uint8_t tss[TSS_IOMAP_OFFSET];
    uint8_t iomap[65536 / 8 + 1]; /* + the all-ones terminator byte */
};
static struct cpl3_tss cpl3_tss __attribute__((aligned(16)));
static uint64_t cpl3_gdt[7] __attribute__((aligned(16)));
extern char lpv_entry64[];

static void iomap_open(uint8_t *map, uint16_t first, uint16_t count)
{
    for (uint32_t p = first; p < (uint32_t)first + count; p++)
        map[p / 8] &= (uint8_t) ~(1u << (p % 8));
}

static __attribute__((noreturn)) void enter_cpl3(const struct lpv_boot_info *bi)
{
    /* the boot info where lparvisor puts it */
    volatile uint8_t *dst = (volatile uint8_t *)(uintptr_t)LPV_BOOT_INFO_GPA;
    const uint8_t *src = (const uint8_t *)bi;
    for (size_t i = 0; i < sizeof *bi; i++)
        dst[i] = src[i];

    memset(&cpl3_tss, 0, sizeof cpl3_tss);
    cpl3_tss.tss[102] = (uint8_t)TSS_IOMAP_OFFSET; /* I/O map base, little-endian u16 */
    cpl3_tss.tss[103] = 0;
    memset(cpl3_tss.iomap, 0xff, sizeof cpl3_tss.iomap);
    iomap_open(cpl3_tss.iomap, LPV_PORT_COM1, 8);
    iomap_open(cpl3_tss.iomap, LPV_PORT_DEBUG_EXIT, 1);
    iomap_open(cpl3_tss.iomap, LPV_PORT_STORAGE_KEY, 4);
    iomap_open(cpl3_tss.iomap, LPV_PORT_PCI_CONFIG, 8);

    const uint64_t base = (uint64_t)(uintptr_t)&cpl3_tss, limit = sizeof cpl3_tss - 1;
    cpl3_gdt[0] = 0;
    cpl3_gdt[LPV_SEL_KERNEL_CODE >> 3] = 0x00AF9A000000FFFFull;
    cpl3_gdt[LPV_SEL_KERNEL_DATA >> 3] = 0x00CF92000000FFFFull;
    cpl3_gdt[LPV_SEL_USER_DATA >> 3] = 0x00CFF2000000FFFFull; /* DPL3 data */
    cpl3_gdt[LPV_SEL_USER_CODE >> 3] = 0x00AFFA000000FFFFull; /* DPL3 64-bit code */
    cpl3_gdt[LPV_SEL_TSS >> 3] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
                                 (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    cpl3_gdt[(LPV_SEL_TSS >> 3) + 1] = base >> 32;

    struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } gdtr = { sizeof cpl3_gdt - 1, (uint64_t)(uintptr_t)cpl3_gdt };
    __asm__ volatile("lgdt %0" : : "m"(gdtr) : "memory");
    __asm__ volatile("ltr %w0" : : "r"((uint16_t)LPV_SEL_TSS));
    __asm__ volatile(
        "movl %[ds], %%eax\n\t"
        "movl %%eax, %%ds\n\t"
        "movl %%eax, %%es\n\t"
        "pushq %[ds]\n\t" /* SS */
        "pushq %[rsp]\n\t" /* RSP: vCPU 0's stack top */
        "pushq $0x2\n\t" /* RFLAGS: interrupts off */
        "pushq %[cs]\n\t" /* CS */
        "pushq %[rip]\n\t" /* RIP */
        "iretq"
        :
        : [ds] "i"(LPV_SEL_USER_DATA), [cs] "i"(LPV_SEL_USER_CODE),
          [rsp] "r"((uint64_t)LPV_STACK_TOP), [rip] "r"(lpv_entry64),
          "D"((uint64_t)LPV_BOOT_INFO_GPA), "S"((uint64_t)0)
        : "rax", "memory");
    __builtin_unreachable();
}

static uint32_t mbi_u32(uint32_t mbi, uint32_t off)
{
    return *(const volatile uint32_t *)(uintptr_t)(mbi + off);
}

static bool prefix(const char *s, const char *p)
{
    while (*p)
        if (*s++ != *p++)
            return false;
    return true;
}

static uint64_t parse_u64(const char *s)
{
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (uint64_t)(*s++ - '0');
    return v;
}

static void parse_cmdline(const char *cmd, struct lpv_boot_info *bi)
{
    const char *p = cmd;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *tok = p;
        while (*p && *p != ' ')
            p++;
        if (prefix(tok, "name=")) {
            size_t n = 0;
            for (const char *s = tok + 5; s < p && n < LPV_NAME_MAX - 1; s++)
                bi->name[n++] = *s;
            bi->name[n] = '\0';
        } else if (prefix(tok, "pages_per_sec=")) {
            bi->rewrite_pages_per_sec = parse_u64(tok + 14);
        } else if (prefix(tok, "working_set_mib=")) {
            bi->working_set_bytes = parse_u64(tok + 16) << 20;
        } else if (prefix(tok, "rounds=")) {
            bi->round_limit = parse_u64(tok + 7);
        } else if (prefix(tok, "report_progress=")) {
            if (parse_u64(tok + 16) != 0)
                bi->flags |= LPV_BOOT_FLAG_REPORT_PROGRESS;
            else
                bi->flags &= ~LPV_BOOT_FLAG_REPORT_PROGRESS;
        } else if (prefix(tok, "cpl3=")) {
            want_cpl3 = parse_u64(tok + 5) != 0;
        }
    }
}

static uint16_t pit_read_ch0(void)
{
    outb(PIT_CMD, 0x00); /* latch channel 0 */
    uint8_t lo = inb(PIT_CH0);
    uint8_t hi = inb(PIT_CH0);
    return (uint16_t)(lo | (hi << 8));
}

/* Channel 0 in mode 0 counting down from 0xffff (interrupts are off, IRQ0 does not matter);
 * count the TSC over CALIBRATE_PIT_TICKS PIT ticks. Returns 0 if the PIT does not count. */
static uint64_t pit_calibrate_khz(void)
{
    outb(PIT_CMD, 0x30); /* channel 0, lobyte/hibyte, mode 0, binary */
    outb(PIT_CH0, 0xff);
    outb(PIT_CH0, 0xff);
    uint16_t c0 = pit_read_ch0(), c;
    uint32_t spins = 0;
    while ((c = pit_read_ch0()) == c0)
        if (++spins > 10000000u)
            return 0;
    const uint64_t t0 = rdtsc();
    c0 = c;
    if (c0 < CALIBRATE_PIT_TICKS + 1000u)
        return 0;
    spins = 0;
    while ((uint16_t)(c0 - (c = pit_read_ch0())) < CALIBRATE_PIT_TICKS) {
        if (c > c0 || ++spins > 100000000u)
            return 0;
    }
    const uint64_t t1 = rdtsc();
    const uint64_t ticks = (uint64_t)(uint16_t)(c0 - c);
    return (t1 - t0) * PIT_HZ / (ticks * 1000);
}

static uint64_t detect_tsc_khz(const char **how)
{
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    if (c & (1u << 31)) { /* hypervisor present: VMware/KVM timing leaf */
        cpuid(0x40000000, 0, &a, &b, &c, &d);
        if (a >= 0x40000010) {
            cpuid(0x40000010, 0, &a, &b, &c, &d);
            if (a) {
                *how = "cpuid-40000010";
                return a;
            }
        }
    }
    cpuid(0, 0, &a, &b, &c, &d);
    const uint32_t max_leaf = a;
    if (max_leaf >= 0x15) {
        cpuid(0x15, 0, &a, &b, &c, &d);
        if (a && b && c) {
            *how = "cpuid-15";
            return (uint64_t)c * b / a / 1000;
        }
    }
    if (max_leaf >= 0x16) {
        cpuid(0x16, 0, &a, &b, &c, &d);
        if (a & 0xffff) {
            *how = "cpuid-16";
            return (uint64_t)(a & 0xffff) * 1000;
        }
    }
    *how = "pit";
    return pit_calibrate_khz();
}

void fw_multiboot_main(uint32_t magic, uint32_t mbi)
{
    struct lpv_boot_info *bi = &mb_boot_info;
    if (magic != FW_MB_BOOT_MAGIC) {
        fw_println("FAIL multiboot magic=0x%x", magic);
        fw_exit(1);
    }
    const uint32_t flags = mbi_u32(mbi, MBI_OFF_FLAGS);
    if (!(flags & MBI_FLAG_MEM)) {
        fw_println("FAIL multiboot no memory info");
        fw_exit(1);
    }
    memset(bi, 0, sizeof *bi);
    bi->magic = LPV_BOOT_MAGIC;
    bi->version = LPV_BOOT_VERSION;
    bi->vcpu_count = 1;
    /* RAM QEMU reports above 1 MiB, plus the first MiB, rounded down to 2 MiB; the identity
     * map covers 4 GiB. */
    uint64_t storage = ((uint64_t)mbi_u32(mbi, MBI_OFF_MEM_UPPER) << 10) + (1ull << 20);
    storage &= ~((2ull << 20) - 1);
    if (storage > (4ull << 30))
        storage = 4ull << 30;
    bi->storage_bytes = storage;
    bi->test_area_gpa = LPV_TEST_AREA_GPA;
    bi->flags =
        LPV_BOOT_FLAG_PCI; /* no storage keys under QEMU; PCI if config mechanism #1 answers */
    const char def_name[] = "QEMU";
    for (size_t i = 0; i < sizeof def_name; i++)
        bi->name[i] = def_name[i];
    if (flags & MBI_FLAG_CMDLINE)
        parse_cmdline((const char *)(uintptr_t)mbi_u32(mbi, MBI_OFF_CMDLINE), bi);

    const char *how = "none";
    bi->tsc_khz = detect_tsc_khz(&how);
    fw_println("lparvisor-firmware: multiboot mem_upper=%uKiB tsc_khz=%lu (%s)",
               mbi_u32(mbi, MBI_OFF_MEM_UPPER), bi->tsc_khz, how);
    map_pci_mmio(storage);
    if (want_cpl3)
        enter_cpl3(bi);
    fw_main(bi, 0);
}
