/*
 * PCI configuration mechanism #1 on bus 0, 32-bit accesses only: the address goes to 0xcf8,
 * the dword comes from 0xcfc. Both ports are opened in the TSS I/O bitmap for the CPL3
 * firmware (each access is one exit under lparvisor). Also the list of MMIO ranges the page
 * tables map for device BARs, and the TSC deadlines of the polled drivers.
 */
#include "fw.h"

#define PCI_CONFIG_ADDRESS LPV_PORT_PCI_CONFIG
#define PCI_CONFIG_DATA (LPV_PORT_PCI_CONFIG + 4)
#define PCI_ENABLE 0x80000000u
#define PCI_HEADER_TYPE_OFF 0x0c
#define PCI_BAR0_OFF 0x10

static inline uint32_t cfg_address(uint32_t bdf, uint32_t off)
{
    return PCI_ENABLE | (bdf << 8) | (off & 0xfc);
}

bool pci_present(void)
{
    outl(PCI_CONFIG_ADDRESS, PCI_ENABLE);
    return inl(PCI_CONFIG_ADDRESS) == PCI_ENABLE;
}

uint32_t pci_read32(uint32_t bdf, uint32_t off)
{
    outl(PCI_CONFIG_ADDRESS, cfg_address(bdf, off));
    return inl(PCI_CONFIG_DATA);
}

void pci_write32(uint32_t bdf, uint32_t off, uint32_t v)
{
    outl(PCI_CONFIG_ADDRESS, cfg_address(bdf, off));
    outl(PCI_CONFIG_DATA, v);
}

static bool id_present(uint32_t id)
{
    const uint16_t vendor = (uint16_t)id;
    return vendor != 0xffff && vendor != 0;
}

void pci_scan(bool (*fn)(uint32_t bdf, uint32_t id, void *arg), void *arg)
{
    for (uint32_t dev = 0; dev < 32; dev++) {
        const uint32_t id0 = pci_read32(PCI_BDF(dev, 0), 0);
        if (!id_present(id0))
            continue;
        const bool multi = (pci_read32(PCI_BDF(dev, 0), PCI_HEADER_TYPE_OFF) >> 16) & 0x80;
        for (uint32_t fn_no = 0; fn_no < (multi ? 8u : 1u); fn_no++) {
            const uint32_t id = fn_no ? pci_read32(PCI_BDF(dev, fn_no), 0) : id0;
            if (!id_present(id))
                continue;
            if (!fn(PCI_BDF(dev, fn_no), id, arg))
                return;
        }
    }
}

bool pci_mem_bar(uint32_t bdf, unsigned bar, uint64_t *addr, bool *is64)
{
    if (bar > 5)
        return false;
    const uint32_t lo = pci_read32(bdf, PCI_BAR0_OFF + 4 * bar);
    if (lo & 1)
        return false; /* I/O BAR */
    uint64_t a = lo & ~0xfull;
    *is64 = ((lo >> 1) & 3) == 2;
    if (*is64) {
        if (bar == 5)
            return false;
        a |= (uint64_t)pci_read32(bdf, PCI_BAR0_OFF + 4 * (bar + 1)) << 32;
    }
    *addr = a;
    return a != 0;
}

/* ---------------------------------------------------------------- MMIO ranges */

#define MMIO_RANGES_MAX 16
struct mmio_range {
    uint64_t base, size;
};
/* .data: valid under lparvisor without any set-up (the loader maps exactly this window). */
static struct mmio_range mmio_ranges[MMIO_RANGES_MAX] __attribute__((section(".data"))) = {
    { LPV_PCI_MMIO_GPA, LPV_PCI_MMIO_SIZE },
};
static uint32_t mmio_range_count __attribute__((section(".data"))) = 1;

void fw_mmio_reset(void)
{
    mmio_range_count = 0;
}

void fw_mmio_allow(uint64_t base, uint64_t size)
{
    if (mmio_range_count < MMIO_RANGES_MAX)
        mmio_ranges[mmio_range_count++] = (struct mmio_range){ base, size };
}

bool fw_mmio_allowed(uint64_t base, uint64_t size)
{
    if (base + size < base)
        return false;
    for (uint32_t i = 0; i < mmio_range_count; i++) {
        const struct mmio_range *r = &mmio_ranges[i];
        if (base >= r->base && base + size <= r->base + r->size)
            return true;
    }
    return false;
}

/* ---------------------------------------------------------------- deadlines */

#define ASSUMED_TSC_KHZ 5000000ull

static uint64_t deadline_tsc_khz __attribute__((section(".data")));

void fw_set_tsc_khz(uint64_t khz)
{
    deadline_tsc_khz = khz;
}

uint64_t fw_deadline_ms(uint64_t ms)
{
    const uint64_t khz = deadline_tsc_khz ? deadline_tsc_khz : ASSUMED_TSC_KHZ;
    return rdtsc() + ms * khz;
}

bool fw_expired(uint64_t deadline)
{
    return (int64_t)(rdtsc() - deadline) > 0;
}
