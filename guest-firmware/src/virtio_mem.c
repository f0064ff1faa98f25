/*
 * The firmware's virtio-mem driver (device type 24, virtio 1.2 section 5.15; vCPU 0 only): the
 * memory an LPAR gains by EXPAND and gives back when it shrinks. The device describes a region
 * [addr, addr + region_size) of block_size blocks; the hypervisor raises requested_size to
 * expand and lowers it to shrink, the driver plugs or unplugs blocks until plugged_size matches.
 * Under lparvisor the region lies right above the boot storage and the page tables map it
 * (boot info max_storage_bytes); under Multiboot multiboot.c maps it (QEMU puts it above 4 GiB).
 *
 * The driver keeps the plugged blocks a prefix of the region: it plugs in ascending address
 * order from the region start and unplugs from the top. It accepts VIRTIO_F_VERSION_1 and
 * VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE (nothing else) and never touches a block that is not
 * plugged (it may be unbacked: under lparvisor such an access stops the LPAR).
 *
 * At start: negotiate, one request queue, the MEM region line; if blocks are plugged already (a
 * reset), UNPLUG_ALL. Each memory round (fw_devices_round), in this order:
 *   1. read requested_size / plugged_size / usable_region_size (config_generation-consistent);
 *      plugged_size must be what the driver plugged;
 *   2. verify every plugged block against the pattern (generation 0 of the test area's
 *      pattern, lpv_pattern_word in abi.h: the word at a is a * LPV_PATTERN_MUL ^ seed);
 *   3. requested < plugged: UNPLUG from the top until plugged == requested;
 *      requested > plugged: PLUG from the lowest unplugged block (at most the usable region and
 *      the mapped part of it), then fill each newly plugged block with the pattern.
 * Requests carry up to MEM_CHUNK_BYTES worth of blocks. NACK or BUSY: tried again next round
 * (one note line per streak); ERROR, a timeout or a bad used element: a FAIL line and the
 * driver leaves the device alone from then on.
 *
 * Serial lines (see also virtio.c):
 *   MEM <name> region 0x<addr> size <MiB> MiB block <KiB> KiB plugged <MiB> MiB requested <MiB> MiB
 *   MEM <name> unplugged to <MiB> MiB                   (after UNPLUG_ALL at start, and each shrink)
 *   MEM <name> plugged <MiB> MiB (requested <MiB> MiB)   (a round that plugged blocks)
 *   MEM <name> verify ok <MiB> MiB round <N>            (each round that starts with blocks plugged)
 *   MEM <name> plug nack|busy at <MiB> MiB (requested <MiB> MiB): retrying next round
 *   MEM <name> unplug nack|busy at <MiB> MiB (requested <MiB> MiB): retrying next round
 *   MEM <name> only <MiB> MiB of the region is mapped: plugging stops there
 *   FAIL mem <name> addr=0x<a> expected=0x<16 hex> got=0x<16 hex> round=N   (at most 4 a round)
 *   FAIL mem <name> mismatches=M round=N
 *   FAIL mem <name>: ...                                 (device, request or mapping problems)
 */
#include "fw.h"

#define VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE_BIT 1

#define MEM_REQ_PLUG 0
#define MEM_REQ_UNPLUG 1
#define MEM_REQ_UNPLUG_ALL 2
#define MEM_RESP_ACK 0
#define MEM_RESP_NACK 1
#define MEM_RESP_BUSY 2
#define MEM_RESP_ERROR 3
#define MEM_RESP_PENDING 0xffff

/* struct virtio_mem_config (all le64 but node_id) */
#define CFG_BLOCK_SIZE 0
#define CFG_ADDR 16
#define CFG_REGION_SIZE 24
#define CFG_USABLE_REGION_SIZE 32
#define CFG_PLUGGED_SIZE 40
#define CFG_REQUESTED_SIZE 48
#define CFG_BYTES 56

#define MEM_QUEUE_MAX 4
#define MEM_CHUNK_BYTES (128ull << 20) /* blocks per request: at most this much memory */
#define MEM_TIMEOUT_MS 30000
#define MEM_BUSY_RETRY_MS 10 /* UNPLUG_ALL at start: pause between BUSY answers */
#define REPORT_MAX 4
#define HOTPLUG_RANGES_MAX 4
#define MIB(x) ((x) >> 20)

struct mem_req {
    uint16_t type;
    uint16_t padding[3];
    uint64_t addr;
    uint16_t nb_blocks;
    uint16_t padding2[3];
};
_Static_assert(sizeof(struct mem_req) == 24, "struct virtio_mem_req");

struct mem_resp {
    uint16_t type;
    uint16_t padding[3];
    uint16_t state;
};
_Static_assert(sizeof(struct mem_resp) == 10, "struct virtio_mem_resp");

struct mem_config {
    uint64_t block_size, addr, region_size, usable, plugged, requested;
};

/* ---------------------------------------------------------------- mapped hot-plug ranges */

struct hotplug_range {
    uint64_t base, size;
};
static struct hotplug_range hotplug_ranges[HOTPLUG_RANGES_MAX] __attribute__((section(".data")));
static uint32_t hotplug_range_count __attribute__((section(".data")));

void fw_hotplug_allow(uint64_t base, uint64_t size)
{
    if (size && hotplug_range_count < HOTPLUG_RANGES_MAX)
        hotplug_ranges[hotplug_range_count++] = (struct hotplug_range){ base, size };
}

/* How many bytes from `addr` on (at most `size`) the hot-plug ranges cover without a gap. */
static uint64_t hotplug_mapped(uint64_t addr, uint64_t size)
{
    uint64_t covered = 0;
    for (bool progress = true; progress && covered < size;) {
        progress = false;
        const uint64_t a = addr + covered;
        for (uint32_t i = 0; i < hotplug_range_count; i++) {
            const struct hotplug_range *r = &hotplug_ranges[i];
            if (a >= r->base && a - r->base < r->size) {
                uint64_t n = r->size - (a - r->base);
                if (n > size - covered)
                    n = size - covered;
                covered += n;
                progress = true;
                break;
            }
        }
    }
    return covered;
}

/* ---------------------------------------------------------------- device state */

static struct {
    struct virtio_dev *d;
    struct virtqueue q;
    const char *name;
    uint64_t seed;
    uint64_t block, addr, region_size;
    uint64_t mapped; /* bytes of the region (from addr) the page tables map */
    uint64_t plugged_blocks; /* the driver's view: [addr, addr + plugged_blocks * block) */
    uint64_t chunk_blocks; /* blocks per PLUG/UNPLUG request */
    bool broken;
    int plug_note, unplug_note; /* the NACK/BUSY already noted in this streak; -1 none */
    volatile struct mem_req *req;
    volatile struct mem_resp *resp;
} mem;

static void mem_fail_stop(void)
{
    fw_note_failure();
    mem.broken = true;
}

static uint64_t read64(struct virtio_dev *d, uint32_t off)
{
    const uint32_t lo = mmio_read32(d->device + off);
    const uint32_t hi = mmio_read32(d->device + off + 4);
    return ((uint64_t)hi << 32) | lo;
}

static void read_config(struct virtio_dev *d, struct mem_config *c)
{
    uint8_t g0, g1;
    do {
        g0 = virtio_config_generation(d);
        c->block_size = read64(d, CFG_BLOCK_SIZE);
        c->addr = read64(d, CFG_ADDR);
        c->region_size = read64(d, CFG_REGION_SIZE);
        c->usable = read64(d, CFG_USABLE_REGION_SIZE);
        c->plugged = read64(d, CFG_PLUGGED_SIZE);
        c->requested = read64(d, CFG_REQUESTED_SIZE);
        g1 = virtio_config_generation(d);
    } while (g0 != g1);
}

bool virtio_mem_region(uint32_t bdf, uint64_t *addr, uint64_t *size)
{
    uint8_t bar;
    uint32_t off, len;
    uint64_t base;
    bool is64;
    if (!virtio_pci_find_cap(bdf, 4, &bar, &off, &len) || len < CFG_BYTES ||
        !pci_mem_bar(bdf, bar, &base, &is64))
        return false;
    struct virtio_dev d;
    memset(&d, 0, sizeof d);
    d.device = base + off;
    *addr = read64(&d, CFG_ADDR);
    *size = read64(&d, CFG_REGION_SIZE);
    return *size != 0 && *addr + *size > *addr;
}

static const char *resp_name(int r)
{
    switch (r) {
    case MEM_RESP_ACK: return "ACK";
    case MEM_RESP_NACK: return "nack";
    case MEM_RESP_BUSY: return "busy";
    case MEM_RESP_ERROR: return "ERROR";
    default: return "?";
    }
}

static const char *req_name(uint16_t type)
{
    return type == MEM_REQ_PLUG ? "plug" : type == MEM_REQ_UNPLUG ? "unplug" : "unplug-all";
}

/* One request, polled to completion: the response type, or -1 after a FAIL line. */
static int request(uint16_t type, uint64_t addr, uint64_t nb_blocks)
{
    volatile struct mem_req *r = mem.req;
    r->type = type;
    r->padding[0] = r->padding[1] = r->padding[2] = 0;
    r->addr = addr;
    r->nb_blocks = (uint16_t)nb_blocks;
    r->padding2[0] = r->padding2[1] = r->padding2[2] = 0;
    mem.resp->type = MEM_RESP_PENDING;
    volatile struct vring_desc *dsc = mem.q.desc;
    dsc[0].addr = (uint64_t)(uintptr_t)r;
    dsc[0].len = sizeof(struct mem_req);
    dsc[0].flags = VRING_DESC_F_NEXT;
    dsc[0].next = 1;
    dsc[1].addr = (uint64_t)(uintptr_t)mem.resp;
    dsc[1].len = sizeof(struct mem_resp);
    dsc[1].flags = VRING_DESC_F_WRITE;
    dsc[1].next = 0;
    vq_submit(&mem.q, 0);
    struct vring_used_elem e;
    const uint64_t deadline = fw_deadline_ms(MEM_TIMEOUT_MS);
    while (!vq_poll(&mem.q, &e)) {
        if (fw_expired(deadline)) {
            fw_println("FAIL mem %s: %s request addr=0x%lx blocks=%lu timed out", mem.name,
                       req_name(type), addr, nb_blocks);
            mem_fail_stop();
            return -1;
        }
        cpu_relax();
    }
    const uint16_t t = mem.resp->type;
    if (e.id != 0 || e.len < sizeof(uint16_t) || t > MEM_RESP_ERROR) {
        fw_println(
            "FAIL mem %s: %s request addr=0x%lx blocks=%lu: bad used id=%u len=%u response=%u",
            mem.name, req_name(type), addr, nb_blocks, e.id, e.len, t);
        mem_fail_stop();
        return -1;
    }
    if (t == MEM_RESP_ERROR) {
        fw_println("FAIL mem %s: %s request addr=0x%lx blocks=%lu answered ERROR", mem.name,
                   req_name(type), addr, nb_blocks);
        mem_fail_stop();
        return -1;
    }
    return t;
}

/* ---------------------------------------------------------------- pattern */

static void fill(uint64_t lo, uint64_t hi)
{
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)lo;
    const uint64_t step = 8 * LPV_PATTERN_MUL;
    uint64_t m = lo * LPV_PATTERN_MUL;
    for (uint64_t a = lo; a < hi; a += 8, p++, m += step)
        *p = m ^ mem.seed; /* lpv_pattern_word(a, 0, seed) */
}

static void verify(uint64_t round)
{
    const uint64_t lo = mem.addr, hi = mem.addr + mem.plugged_blocks * mem.block;
    const volatile uint64_t *p = (const volatile uint64_t *)(uintptr_t)lo;
    const uint64_t step = 8 * LPV_PATTERN_MUL;
    uint64_t m = lo * LPV_PATTERN_MUL, bad = 0;
    for (uint64_t a = lo; a < hi; a += 8, p++, m += step) {
        const uint64_t got = *p, exp = m ^ mem.seed;
        if (__builtin_expect(got != exp, 0)) {
            if (bad < REPORT_MAX)
                fw_println("FAIL mem %s addr=0x%lx expected=0x%016lx got=0x%016lx round=%lu",
                           mem.name, a, exp, got, round);
            bad++;
        }
    }
    if (bad) {
        fw_println("FAIL mem %s mismatches=%lu round=%lu", mem.name, bad, round);
        fw_note_failure();
        return;
    }
    fw_println("MEM %s verify ok %lu MiB round %lu", mem.name, MIB(hi - lo), round);
}

/* ---------------------------------------------------------------- plug / unplug */

static void note_retry(int *note, int r, const char *what, uint64_t requested)
{
    if (*note == r)
        return;
    *note = r;
    fw_println("MEM %s %s %s at %lu MiB (requested %lu MiB): retrying next round", mem.name, what,
               resp_name(r), MIB(mem.plugged_blocks * mem.block), MIB(requested));
}

static void unplug_to(uint64_t want, uint64_t requested)
{
    bool progress = false;
    while (mem.plugged_blocks > want) {
        uint64_t n = mem.plugged_blocks - want;
        if (n > mem.chunk_blocks)
            n = mem.chunk_blocks;
        const uint64_t first = mem.plugged_blocks - n;
        /* from here on the firmware never touches these blocks again (until plugged anew) */
        const int r = request(MEM_REQ_UNPLUG, mem.addr + first * mem.block, n);
        if (r < 0)
            return;
        if (r != MEM_RESP_ACK) {
            note_retry(&mem.unplug_note, r, "unplug", requested);
            break;
        }
        mem.plugged_blocks = first;
        mem.unplug_note = -1;
        progress = true;
    }
    if (progress)
        fw_println("MEM %s unplugged to %lu MiB", mem.name, MIB(mem.plugged_blocks * mem.block));
}

static void plug_to(uint64_t want, uint64_t requested)
{
    bool progress = false;
    while (mem.plugged_blocks < want) {
        uint64_t n = want - mem.plugged_blocks;
        if (n > mem.chunk_blocks)
            n = mem.chunk_blocks;
        const uint64_t a = mem.addr + mem.plugged_blocks * mem.block;
        const int r = request(MEM_REQ_PLUG, a, n);
        if (r < 0)
            return;
        if (r != MEM_RESP_ACK) {
            note_retry(&mem.plug_note, r, "plug", requested);
            break;
        }
        fill(a, a + n * mem.block); /* plugged (and backed) only once the ACK is here */
        mem.plugged_blocks += n;
        mem.plug_note = -1;
        progress = true;
    }
    if (progress)
        fw_println("MEM %s plugged %lu MiB (requested %lu MiB)", mem.name,
                   MIB(mem.plugged_blocks * mem.block), MIB(requested));
}

void virtio_mem_round(uint64_t round)
{
    if (mem.broken)
        return;
    struct mem_config c;
    read_config(mem.d, &c);
    const uint64_t have = mem.plugged_blocks * mem.block;
    if (c.plugged != have) {
        fw_println("FAIL mem %s: plugged_size %lu MiB but the driver plugged %lu MiB round=%lu",
                   mem.name, MIB(c.plugged), MIB(have), round);
        mem_fail_stop();
        return;
    }
    if (mem.plugged_blocks)
        verify(round);

    uint64_t limit = c.usable < mem.region_size ? c.usable : mem.region_size;
    if (limit > mem.mapped)
        limit = mem.mapped;
    uint64_t want = c.requested / mem.block;
    if (want > limit / mem.block)
        want = limit / mem.block;
    if (want < mem.plugged_blocks)
        unplug_to(want, c.requested);
    else if (want > mem.plugged_blocks)
        plug_to(want, c.requested);
}

/* ---------------------------------------------------------------- start */

static bool unplug_all(void)
{
    const uint64_t deadline = fw_deadline_ms(MEM_TIMEOUT_MS);
    for (;;) {
        const int r = request(MEM_REQ_UNPLUG_ALL, 0, 0);
        if (r < 0)
            return false;
        if (r == MEM_RESP_ACK)
            return true;
        if (fw_expired(deadline)) {
            fw_println("FAIL mem %s: unplug-all answered %s until the timeout", mem.name,
                       resp_name(r));
            mem_fail_stop();
            return false;
        }
        const uint64_t pause_until = fw_deadline_ms(MEM_BUSY_RETRY_MS);
        while (!fw_expired(pause_until))
            cpu_relax();
    }
}

static bool init_fail(const char *why, const struct mem_config *c)
{
    fw_println("FAIL mem %s: virtio-mem %s %s (block 0x%lx region 0x%lx+0x%lx)", mem.name,
               mem.d->label, why, c->block_size, c->addr, c->region_size);
    fw_note_failure();
    virtio_fail(mem.d);
    return false;
}

bool virtio_mem_init(struct virtio_dev *d, const char *name, const struct lpv_boot_info *bi)
{
    memset(&mem, 0, sizeof mem);
    mem.d = d;
    mem.name = name;
    mem.seed = lpv_pattern_seed(name);
    mem.plug_note = mem.unplug_note = -1;
    if (!d->device || d->device_len < CFG_BYTES) {
        fw_println("FAIL mem %s: virtio-mem %s without a device configuration of %u bytes", name,
                   d->label, CFG_BYTES);
        fw_note_failure();
        return false;
    }
    if (!virtio_negotiate(d, 1ull << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE_BIT))
        return false;
    struct mem_config c;
    read_config(d, &c);
    const uint64_t bs = c.block_size;
    if (bs < 4096 || (bs & (bs - 1)))
        return init_fail("has a block size that is not a power of two >= 4 KiB", &c);
    if (c.region_size == 0 || c.addr % bs || c.region_size % bs || c.addr + c.region_size < c.addr)
        return init_fail("has an empty, misaligned or wrapping region", &c);
    if (c.addr < bi->storage_bytes)
        return init_fail("overlaps the storage", &c);
    mem.block = bs;
    mem.addr = c.addr;
    mem.region_size = c.region_size;
    mem.chunk_blocks = MEM_CHUNK_BYTES / bs;
    if (mem.chunk_blocks == 0)
        mem.chunk_blocks = 1;
    if (mem.chunk_blocks > 0xffff)
        mem.chunk_blocks = 0xffff;
    mem.mapped = hotplug_mapped(c.addr, c.region_size) & ~(bs - 1);

    if (!virtio_setup_queue(d, &mem.q, 0, MEM_QUEUE_MAX))
        return false;
    if (mem.q.size < 2) {
        fw_println("FAIL mem %s: queue of %u entries cannot hold a request", name, mem.q.size);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    mem.req = dma_alloc(sizeof(struct mem_req), 64);
    mem.resp = dma_alloc(sizeof(struct mem_resp), 64);
    if (!mem.req || !mem.resp) {
        fw_println("FAIL mem %s: DMA area exhausted", name);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    virtio_driver_ok(d);
    fw_println("MEM %s region 0x%lx size %lu MiB block %lu KiB plugged %lu MiB requested %lu MiB",
               name, c.addr, MIB(c.region_size), bs >> 10, MIB(c.plugged), MIB(c.requested));

    if (c.plugged) { /* left over from before a reset: start from nothing */
        if (!unplug_all())
            return false;
        read_config(d, &c);
        if (c.plugged) {
            fw_println("FAIL mem %s: plugged_size %lu MiB after unplug-all", name, MIB(c.plugged));
            mem_fail_stop();
            return false;
        }
        fw_println("MEM %s unplugged to 0 MiB", name);
    }
    if (mem.mapped == 0) {
        fw_println("FAIL mem %s: the page tables do not map the region 0x%lx+0x%lx", name, c.addr,
                   c.region_size);
        mem_fail_stop();
        return false;
    }
    if (mem.mapped < c.region_size)
        fw_println("MEM %s only %lu MiB of the region is mapped: plugging stops there", name,
                   MIB(mem.mapped));
    return true;
}
