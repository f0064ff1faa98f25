/*
 * Modern (virtio 1.x) virtio-pci transport for the firmware: the capability list, the common
 * configuration structure, split virtqueues in the DMA area, notifications by MMIO writes, and
 * completion by polling the used ring (no MSI-X, INTx disabled in the command register: the
 * firmware never takes an interrupt). Everything here is unprivileged: config-space port I/O on
 * the ports the TSS opens, MMIO through the user-accessible uncached mapping of the BARs.
 *
 * vCPU 0 alone drives the devices: fw_devices_init after the banner, one disk pass and one
 * virtio-mem step (plug / verify / unplug, virtio_mem.c) per memory round (fw_devices_round), the
 * final disk line at the round limit (fw_devices_finish). Only
 * when the boot info has LPV_BOOT_FLAG_PCI (lparvisor sets it when it serves 0xcf8-0xcff; the
 * Multiboot path always, and then checks that 0xcf8 reads back).
 *
 * Serial lines (besides the FAIL lines, which all start with "FAIL virtio", "FAIL disk",
 * "FAIL rng" or "FAIL mem"):
 *   virtio 00:DD.F: id 0x<id> type <T> (blk|rng|mem|other) common=0x<a> notify=0x<a>*<mult> device=0x<a>+0x<len>
 *   virtio 00:DD.F: not used by the firmware        (a second blk/rng/mem, or another type)
 *   pci: no configuration mechanism #1              (flag set, but 0xcf8 does not read back)
 *   DISK <name> capacity <sectors> sectors blocks <N> queue <Q> inflight <K> flush yes|no
 *   DISK <name> id "<serial>"                        (GET_ID; non-printable bytes shown as '?')
 *   DISK <name> pass <P> ok blocks <N>               (after each round P's write+flush+read-back)
 *   DISK <name> final pass <P> blocks <N>            (at the round limit, before the done line)
 *   RNG <name> ok <n> bytes
 *   MEM <name> ...                                   (virtio-mem: see virtio_mem.c)
 */
#include "fw.h"

/* PCI config space */
#define PCI_COMMAND_OFF 0x04
#define PCI_CMD_MEMORY (1u << 1)
#define PCI_CMD_MASTER (1u << 2)
#define PCI_CMD_INTX_DISABLE (1u << 10)
#define PCI_STATUS_CAP_LIST (1u << (16 + 4))
#define PCI_SUBSYSTEM_OFF 0x2c
#define PCI_CAP_PTR_OFF 0x34
#define PCI_CAP_ID_VENDOR 0x09

#define VIRTIO_PCI_VENDOR 0x1af4
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4

/* struct virtio_pci_common_cfg */
#define CC_DEVICE_FEATURE_SELECT 0x00
#define CC_DEVICE_FEATURE 0x04
#define CC_DRIVER_FEATURE_SELECT 0x08
#define CC_DRIVER_FEATURE 0x0c
#define CC_NUM_QUEUES 0x12
#define CC_DEVICE_STATUS 0x14
#define CC_CONFIG_GENERATION 0x15
#define CC_QUEUE_SELECT 0x16
#define CC_QUEUE_SIZE 0x18
#define CC_QUEUE_ENABLE 0x1c
#define CC_QUEUE_NOTIFY_OFF 0x1e
#define CC_QUEUE_DESC 0x20
#define CC_QUEUE_DRIVER 0x28
#define CC_QUEUE_DEVICE 0x30
#define CC_SIZE 0x38

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_FAILED 128

#define RESET_TIMEOUT_MS 2000

/* ---------------------------------------------------------------- DMA area */

static uint64_t dma_next __attribute__((section(".data"))) = LPV_FW_DMA_GPA;

void *dma_alloc(uint64_t size, uint64_t align)
{
    const uint64_t a = (dma_next + align - 1) & ~(align - 1);
    if (a + size > LPV_FW_DMA_GPA + LPV_FW_DMA_SIZE || a + size < a)
        return NULL;
    dma_next = a + size;
    volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)a;
    for (uint64_t i = 0; i < size; i++)
        p[i] = 0;
    return (void *)(uintptr_t)a;
}

/* ---------------------------------------------------------------- capabilities */

static const char *type_name(uint16_t type)
{
    switch (type) {
    case VIRTIO_ID_BLOCK: return "blk";
    case VIRTIO_ID_RNG: return "rng";
    case VIRTIO_ID_MEM: return "mem";
    default: return "other";
    }
}

static void make_label(struct virtio_dev *d)
{
    const uint32_t dev = (d->bdf >> 3) & 31, fn = d->bdf & 7;
    fw_snprintf(d->label, sizeof d->label, "00:%02x.%x", dev, fn);
}

/* Resolves one virtio capability to an MMIO address; false (with a FAIL line) if unusable. */
static bool cap_address(struct virtio_dev *d, const char *what, uint8_t bar, uint32_t offset,
                        uint32_t length, uint64_t *out)
{
    uint64_t base;
    bool is64;
    if (!pci_mem_bar(d->bdf, bar, &base, &is64)) {
        fw_println("FAIL virtio %s: %s capability in BAR %u, which is not an assigned memory BAR",
                   d->label, what, bar);
        fw_note_failure();
        return false;
    }
    const uint64_t a = base + offset;
    if (!fw_mmio_allowed(a, length ? length : 1)) {
        fw_println("FAIL virtio %s: %s structure at 0x%lx+0x%x is outside the mapped MMIO ranges",
                   d->label, what, a, length);
        fw_note_failure();
        return false;
    }
    *out = a;
    return true;
}

bool virtio_pci_find_cap(uint32_t bdf, uint8_t cfg_type, uint8_t *bar, uint32_t *offset,
                         uint32_t *length)
{
    if (!(pci_read32(bdf, PCI_COMMAND_OFF) & PCI_STATUS_CAP_LIST))
        return false;
    uint32_t ptr = pci_read32(bdf, PCI_CAP_PTR_OFF) & 0xfc;
    for (unsigned guard = 0; ptr >= 0x40 && guard < 48; guard++) {
        const uint32_t w0 = pci_read32(bdf, ptr);
        if ((uint8_t)w0 == PCI_CAP_ID_VENDOR && (uint8_t)(w0 >> 16) >= 16 &&
            (uint8_t)(w0 >> 24) == cfg_type) {
            const uint8_t b = (uint8_t)pci_read32(bdf, ptr + 4);
            if (b <= 5) {
                *bar = b;
                *offset = pci_read32(bdf, ptr + 8);
                *length = pci_read32(bdf, ptr + 12);
                return true;
            }
        }
        ptr = (w0 >> 8) & 0xfc;
    }
    return false;
}

bool virtio_pci_probe(uint32_t bdf, uint32_t id, struct virtio_dev *d)
{
    if ((id & 0xffff) != VIRTIO_PCI_VENDOR)
        return false;
    const uint16_t device_id = (uint16_t)(id >> 16);
    memset(d, 0, sizeof *d);
    d->bdf = bdf;
    d->device_id = device_id;
    make_label(d);
    if (device_id >= 0x1040 && device_id <= 0x107f)
        d->type = (uint16_t)(device_id - 0x1040);
    else if (device_id >= 0x1000 && device_id <= 0x103f)
        d->type = (uint16_t)(pci_read32(bdf, PCI_SUBSYSTEM_OFF) >> 16); /* transitional */
    else
        return false;

    const uint32_t cmd_status = pci_read32(bdf, PCI_COMMAND_OFF);
    if (!(cmd_status & PCI_STATUS_CAP_LIST)) {
        fw_println("virtio %s: id 0x%x without a capability list (legacy only): ignored", d->label,
                   device_id);
        return false;
    }

    bool have[5] = { false, false, false, false, false };
    uint8_t cap_bar[5] = { 0 };
    uint32_t cap_off[5] = { 0 }, cap_len[5] = { 0 };
    uint32_t ptr = pci_read32(bdf, PCI_CAP_PTR_OFF) & 0xfc;
    for (unsigned guard = 0; ptr >= 0x40 && guard < 48; guard++) {
        const uint32_t w0 = pci_read32(bdf, ptr);
        const uint8_t cap_id = (uint8_t)w0, next = (uint8_t)(w0 >> 8),
                      cap_len_b = (uint8_t)(w0 >> 16);
        const uint8_t cfg_type = (uint8_t)(w0 >> 24);
        if (cap_id == PCI_CAP_ID_VENDOR && cap_len_b >= 16 && cfg_type >= 1 && cfg_type <= 4 &&
            !have[cfg_type]) {
            const uint8_t bar = (uint8_t)pci_read32(bdf, ptr + 4);
            if (bar <= 5) { /* other values are reserved: skip the capability */
                have[cfg_type] = true;
                cap_bar[cfg_type] = bar;
                cap_off[cfg_type] = pci_read32(bdf, ptr + 8);
                cap_len[cfg_type] = pci_read32(bdf, ptr + 12);
                if (cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG)
                    d->notify_mult = cap_len_b >= 20 ? pci_read32(bdf, ptr + 16) : 0;
            }
        }
        ptr = next & 0xfc;
    }
    if (!have[VIRTIO_PCI_CAP_COMMON_CFG] || !have[VIRTIO_PCI_CAP_NOTIFY_CFG] ||
        !have[VIRTIO_PCI_CAP_ISR_CFG]) {
        fw_println("virtio %s: id 0x%x without the virtio 1.x capabilities: ignored", d->label,
                   device_id);
        return false;
    }
    if (cap_len[VIRTIO_PCI_CAP_COMMON_CFG] < CC_SIZE) {
        fw_println("FAIL virtio %s: common configuration of %u bytes (needs %u)", d->label,
                   cap_len[VIRTIO_PCI_CAP_COMMON_CFG], CC_SIZE);
        fw_note_failure();
        return false;
    }

    /* Enable memory decoding and bus mastering; no INTx (the firmware polls). Writing 0 to the
     * status half leaves its write-1-to-clear bits alone. */
    const uint32_t cmd =
        (cmd_status & 0xffff) | PCI_CMD_MEMORY | PCI_CMD_MASTER | PCI_CMD_INTX_DISABLE;
    pci_write32(bdf, PCI_COMMAND_OFF, cmd);

    if (!cap_address(d, "common", cap_bar[1], cap_off[1], cap_len[1], &d->common) ||
        !cap_address(d, "notify", cap_bar[2], cap_off[2], cap_len[2], &d->notify) ||
        !cap_address(d, "isr", cap_bar[3], cap_off[3], cap_len[3], &d->isr))
        return false;
    d->notify_len = cap_len[2];
    if (have[VIRTIO_PCI_CAP_DEVICE_CFG]) {
        if (!cap_address(d, "device", cap_bar[4], cap_off[4], cap_len[4], &d->device))
            return false;
        d->device_len = cap_len[4];
    }
    fw_println("virtio %s: id 0x%x type %u (%s) common=0x%lx notify=0x%lx*%u device=0x%lx+0x%x",
               d->label, device_id, d->type, type_name(d->type), d->common, d->notify,
               d->notify_mult, d->device, d->device_len);
    return true;
}

/* ---------------------------------------------------------------- status and features */

static uint8_t get_status(struct virtio_dev *d)
{
    return mmio_read8(d->common + CC_DEVICE_STATUS);
}

static void set_status(struct virtio_dev *d, uint8_t s)
{
    mmio_write8(d->common + CC_DEVICE_STATUS, s);
}

void virtio_fail(struct virtio_dev *d)
{
    set_status(d, (uint8_t)(get_status(d) | STATUS_FAILED));
}

uint8_t virtio_config_generation(struct virtio_dev *d)
{
    return mmio_read8(d->common + CC_CONFIG_GENERATION);
}

static uint64_t read_device_features(struct virtio_dev *d)
{
    mmio_write32(d->common + CC_DEVICE_FEATURE_SELECT, 0);
    const uint32_t lo = mmio_read32(d->common + CC_DEVICE_FEATURE);
    mmio_write32(d->common + CC_DEVICE_FEATURE_SELECT, 1);
    const uint32_t hi = mmio_read32(d->common + CC_DEVICE_FEATURE);
    return ((uint64_t)hi << 32) | lo;
}

static void write_driver_features(struct virtio_dev *d, uint64_t f)
{
    mmio_write32(d->common + CC_DRIVER_FEATURE_SELECT, 0);
    mmio_write32(d->common + CC_DRIVER_FEATURE, (uint32_t)f);
    mmio_write32(d->common + CC_DRIVER_FEATURE_SELECT, 1);
    mmio_write32(d->common + CC_DRIVER_FEATURE, (uint32_t)(f >> 32));
}

bool virtio_negotiate(struct virtio_dev *d, uint64_t optional)
{
    set_status(d, 0); /* reset; the device reads back 0 once it is done */
    const uint64_t deadline = fw_deadline_ms(RESET_TIMEOUT_MS);
    while (get_status(d) != 0) {
        if (fw_expired(deadline)) {
            fw_println("FAIL virtio %s: device_status stays 0x%x after reset", d->label,
                       get_status(d));
            fw_note_failure();
            return false;
        }
        cpu_relax();
    }
    set_status(d, STATUS_ACKNOWLEDGE);
    set_status(d, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d->device_features = read_device_features(d);
    const uint64_t version1 = 1ull << VIRTIO_F_VERSION_1_BIT;
    if (!(d->device_features & version1)) {
        fw_println("FAIL virtio %s: no VIRTIO_F_VERSION_1 (features 0x%lx)", d->label,
                   d->device_features);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    d->features = version1 | (d->device_features & optional);
    write_driver_features(d, d->features);
    set_status(d, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    const uint8_t st = get_status(d);
    if (!(st & STATUS_FEATURES_OK)) {
        fw_println("FAIL virtio %s: FEATURES_OK not accepted (status 0x%x, features 0x%lx)",
                   d->label, st, d->features);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------- virtqueues */

static void write64_split(uint64_t a, uint64_t v)
{
    /* 64-bit fields as two 32-bit halves, which the spec allows and every transport serves */
    mmio_write32(a, (uint32_t)v);
    mmio_write32(a + 4, (uint32_t)(v >> 32));
}

bool virtio_setup_queue(struct virtio_dev *d, struct virtqueue *q, uint16_t index,
                        uint16_t max_size)
{
    const uint16_t nq = mmio_read16(d->common + CC_NUM_QUEUES);
    if (index >= nq) {
        fw_println("FAIL virtio %s: queue %u missing (num_queues %u)", d->label, index, nq);
        goto fail;
    }
    mmio_write16(d->common + CC_QUEUE_SELECT, index);
    const uint16_t dev_max = mmio_read16(d->common + CC_QUEUE_SIZE);
    if (dev_max == 0) {
        fw_println("FAIL virtio %s: queue %u has size 0", d->label, index);
        goto fail;
    }
    uint16_t size = 1;
    while ((uint32_t)size * 2 <= dev_max && (uint32_t)size * 2 <= max_size)
        size = (uint16_t)(size * 2);

    /* one allocation: descriptors (16-byte aligned), avail ring, used ring (4-byte aligned) */
    const uint64_t desc_bytes = 16ull * size;
    const uint64_t avail_bytes = 6 + 2ull * size;
    const uint64_t used_off = (desc_bytes + avail_bytes + 3) & ~3ull;
    const uint64_t used_bytes = 6 + 8ull * size;
    uint8_t *mem = dma_alloc(used_off + used_bytes, 4096);
    if (!mem) {
        fw_println("FAIL virtio %s: DMA area exhausted", d->label);
        goto fail;
    }
    q->index = index;
    q->size = size;
    q->desc = (volatile struct vring_desc *)mem;
    q->avail = (volatile uint16_t *)(mem + desc_bytes);
    q->used = (volatile uint16_t *)(mem + used_off);
    q->avail_idx = 0;
    q->used_seen = 0;

    mmio_write16(d->common + CC_QUEUE_SIZE, size);
    write64_split(d->common + CC_QUEUE_DESC, (uint64_t)(uintptr_t)q->desc);
    write64_split(d->common + CC_QUEUE_DRIVER, (uint64_t)(uintptr_t)q->avail);
    write64_split(d->common + CC_QUEUE_DEVICE, (uint64_t)(uintptr_t)q->used);
    const uint16_t notify_off = mmio_read16(d->common + CC_QUEUE_NOTIFY_OFF);
    const uint64_t rel = (uint64_t)notify_off * d->notify_mult;
    if (rel + 2 > d->notify_len) {
        fw_println(
            "FAIL virtio %s: queue %u notify offset 0x%lx outside the notify structure (0x%x)",
            d->label, index, rel, d->notify_len);
        goto fail;
    }
    q->notify_addr = d->notify + rel;
    mmio_write16(d->common + CC_QUEUE_ENABLE, 1);
    return true;
fail:
    fw_note_failure();
    virtio_fail(d);
    return false;
}

void virtio_driver_ok(struct virtio_dev *d)
{
    set_status(d, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
}

void vq_publish(struct virtqueue *q, uint16_t head)
{
    q->avail[2 + (q->avail_idx % q->size)] = head;
    barrier(); /* x86: stores are not reordered with other stores */
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
}

void vq_kick(struct virtqueue *q)
{
    full_fence(); /* the avail index before the notify (and before any later used-ring read) */
    mmio_write16(q->notify_addr, q->index);
}

void vq_submit(struct virtqueue *q, uint16_t head)
{
    vq_publish(q, head);
    vq_kick(q);
}

bool vq_poll(struct virtqueue *q, struct vring_used_elem *e)
{
    const uint16_t idx = q->used[1];
    if (idx == q->used_seen)
        return false;
    barrier(); /* x86: loads are not reordered with other loads */
    const volatile struct vring_used_elem *ring =
        (const volatile struct vring_used_elem *)(q->used + 2);
    const uint16_t slot = q->used_seen % q->size;
    e->id = ring[slot].id;
    e->len = ring[slot].len;
    q->used_seen++;
    return true;
}

/* ---------------------------------------------------------------- devices of the firmware */

struct scan_state {
    const char *name;
    const struct lpv_boot_info *bi;
    bool blk_done, rng_done, mem_done;
    struct virtio_dev blk, rng, mem;
    uint32_t others;
};

static bool disk_active __attribute__((section(".data")));
static bool mem_active __attribute__((section(".data")));

static bool scan_one(uint32_t bdf, uint32_t id, void *arg)
{
    struct scan_state *s = arg;
    struct virtio_dev d;
    if (!virtio_pci_probe(bdf, id, &d))
        return true;
    if (d.type == VIRTIO_ID_BLOCK && !s->blk_done) {
        s->blk_done = true;
        s->blk = d;
        disk_active = virtio_blk_init(&s->blk, s->name);
    } else if (d.type == VIRTIO_ID_RNG && !s->rng_done) {
        s->rng_done = true;
        s->rng = d;
        virtio_rng_test(&s->rng, s->name);
    } else if (d.type == VIRTIO_ID_MEM && !s->mem_done) {
        s->mem_done = true;
        s->mem = d;
        mem_active = virtio_mem_init(&s->mem, s->name, s->bi);
    } else {
        fw_println("virtio %s: not used by the firmware", d.label);
        s->others++;
    }
    return true;
}

void fw_devices_init(const struct lpv_boot_info *bi, const char *name)
{
    fw_set_tsc_khz(bi->tsc_khz);
    if (bi->max_storage_bytes > bi->storage_bytes) /* lparvisor's map of an expandable LPAR */
        fw_hotplug_allow(bi->storage_bytes, bi->max_storage_bytes - bi->storage_bytes);
    if (!(bi->flags & LPV_BOOT_FLAG_PCI))
        return;
    if (!pci_present()) {
        fw_println("pci: no configuration mechanism #1");
        return;
    }
    static struct scan_state s; /* .bss: keeps the device structures for the later passes */
    memset(&s, 0, sizeof s);
    s.name = name;
    s.bi = bi;
    pci_scan(scan_one, &s);
}

void fw_devices_round(uint64_t round)
{
    if (disk_active)
        virtio_blk_pass(round);
    if (mem_active)
        virtio_mem_round(round);
}

void fw_devices_finish(void)
{
    if (disk_active)
        virtio_blk_final();
}
