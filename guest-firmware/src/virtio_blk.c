/*
 * The firmware's virtio-blk test (vCPU 0). One request queue; each request is a three-descriptor
 * chain (header, 4 KiB data, status byte) in a fixed slot of the DMA area; reads go in batches
 * of up to BLK_INFLIGHT requests published together and announced with one notify, then the
 * used ring is polled. Writes go one at a time, in block order, so that whatever the device's
 * ordering, an image taken while a pass is under way holds the new pass in a prefix of blocks
 * and the previous pass after it.
 *
 * Pass P (one per memory round): write block b (sectors 8b..8b+7) of the first
 * min(capacity, 4 MiB) with lpv_disk_word(name, b, P, w) for each word w, FLUSH (when the device
 * offers VIRTIO_BLK_F_FLUSH; without it the device is write-through), read every block back and
 * compare. Any IOERR, timeout or mismatch prints a FAIL line and ends the disk test (the device
 * is left alone from then on). Line formats: virtio.c.
 */
#include "fw.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR_BYTES 512u
#define SECTORS_PER_BLOCK (LPV_DISK_BLOCK_BYTES / SECTOR_BYTES)

#define BLK_QUEUE_MAX 32 /* queue entries we ask for (fewer if the device has fewer) */
#define BLK_INFLIGHT 8 /* read requests per batch (at most queue size / 3) */
#define BLK_TIMEOUT_MS 20000
#define STATUS_PENDING 0xff
#define REPORT_MAX 4

struct blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

struct blk_slot_meta {
    struct blk_req_hdr hdr;
    uint8_t status;
    uint8_t pad[15];
};
_Static_assert(sizeof(struct blk_slot_meta) == 32, "slot layout");

static struct {
    struct virtio_dev *d;
    struct virtqueue q;
    const char *name;
    uint64_t name_hash;
    uint64_t capacity; /* sectors */
    uint64_t blocks; /* test blocks */
    uint32_t inflight; /* slots */
    bool flush;
    bool broken;
    uint64_t last_pass; /* last pass written, flushed and verified */
    volatile struct blk_slot_meta *meta; /* [inflight] */
    uint8_t *data; /* [inflight][4096] */
} blk;

static void blk_fail_stop(void)
{
    fw_note_failure();
    blk.broken = true;
}

static uint64_t config_u64(struct virtio_dev *d, uint32_t off)
{
    uint32_t lo, hi;
    uint8_t g0, g1;
    do {
        g0 = virtio_config_generation(d);
        lo = mmio_read32(d->device + off);
        hi = mmio_read32(d->device + off + 4);
        g1 = virtio_config_generation(d);
    } while (g0 != g1);
    return ((uint64_t)hi << 32) | lo;
}

/* Builds the chain of slot `k`: header, optional data (`len` bytes, device-writable if
 * `to_device` is false), status. The head descriptor is 3k. */
static void build(uint32_t k, uint32_t type, uint64_t sector, uint32_t len, bool device_writes)
{
    volatile struct blk_slot_meta *m = &blk.meta[k];
    m->hdr.type = type;
    m->hdr.reserved = 0;
    m->hdr.sector = sector;
    m->status = STATUS_PENDING;
    volatile struct vring_desc *dsc = blk.q.desc;
    const uint16_t h = (uint16_t)(3 * k);
    dsc[h].addr = (uint64_t)(uintptr_t)&m->hdr;
    dsc[h].len = sizeof(struct blk_req_hdr);
    dsc[h].flags = VRING_DESC_F_NEXT;
    uint16_t st = (uint16_t)(h + 1);
    if (len) {
        dsc[h].next = (uint16_t)(h + 1);
        dsc[h + 1].addr = (uint64_t)(uintptr_t)(blk.data + (uint64_t)k * LPV_DISK_BLOCK_BYTES);
        dsc[h + 1].len = len;
        dsc[h + 1].flags = (uint16_t)(VRING_DESC_F_NEXT | (device_writes ? VRING_DESC_F_WRITE : 0));
        dsc[h + 1].next = (uint16_t)(h + 2);
        st = (uint16_t)(h + 2);
    } else {
        dsc[h].next = st;
    }
    dsc[st].addr = (uint64_t)(uintptr_t)&m->status;
    dsc[st].len = 1;
    dsc[st].flags = VRING_DESC_F_WRITE;
    dsc[st].next = 0;
    vq_publish(&blk.q, h);
}

static const char *op_name(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN: return "read";
    case VIRTIO_BLK_T_OUT: return "write";
    case VIRTIO_BLK_T_FLUSH: return "flush";
    default: return "get-id";
    }
}

/* Notifies and waits until the `n` requests in slots 0..n-1 are back; checks their status. */
static bool run_batch(uint32_t n, uint32_t type, uint64_t first_block, uint64_t pass)
{
    vq_kick(&blk.q);
    uint32_t done = 0;
    uint32_t seen_mask = 0;
    const uint64_t deadline = fw_deadline_ms(BLK_TIMEOUT_MS);
    while (done < n) {
        struct vring_used_elem e;
        if (!vq_poll(&blk.q, &e)) {
            if (fw_expired(deadline)) {
                fw_println("FAIL disk %s timeout op=%s pass=%lu block=%lu done=%u/%u", blk.name,
                           op_name(type), pass, first_block, done, n);
                blk_fail_stop();
                return false;
            }
            cpu_relax();
            continue;
        }
        const uint32_t k = e.id / 3;
        if (e.id % 3 != 0 || k >= n || (seen_mask & (1u << k))) {
            fw_println("FAIL disk %s bad used id=%u op=%s pass=%lu block=%lu", blk.name, e.id,
                       op_name(type), pass, first_block);
            blk_fail_stop();
            return false;
        }
        seen_mask |= 1u << k;
        done++;
    }
    for (uint32_t k = 0; k < n; k++) {
        const uint8_t st = blk.meta[k].status;
        if (st != VIRTIO_BLK_S_OK) {
            fw_println("FAIL disk %s status=%u op=%s pass=%lu block=%lu", blk.name, st,
                       op_name(type), pass, first_block + k);
            blk_fail_stop();
            return false;
        }
    }
    return true;
}

static void fill_block(uint8_t *buf, uint64_t block, uint64_t pass)
{
    volatile uint64_t *w = (volatile uint64_t *)buf;
    const uint64_t seed = lpv_disk_block_seed(blk.name_hash, block, pass);
    for (uint64_t i = 0; i < LPV_DISK_WORDS_PER_BLOCK; i++)
        w[i] = lpv_disk_word_seeded(seed, i);
}

static uint64_t check_block(const uint8_t *buf, uint64_t block, uint64_t pass, uint64_t bad)
{
    const volatile uint64_t *w = (const volatile uint64_t *)buf;
    const uint64_t seed = lpv_disk_block_seed(blk.name_hash, block, pass);
    for (uint64_t i = 0; i < LPV_DISK_WORDS_PER_BLOCK; i++) {
        const uint64_t exp = lpv_disk_word_seeded(seed, i), got = w[i];
        if (got != exp) {
            if (bad < REPORT_MAX)
                fw_println(
                    "FAIL disk %s data pass=%lu block=%lu word=%lu expected=0x%016lx got=0x%016lx",
                    blk.name, pass, block, i, exp, got);
            bad++;
        }
    }
    return bad;
}

static void get_id(void)
{
    build(0, VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, true);
    if (!run_batch(1, VIRTIO_BLK_T_GET_ID, 0, 0))
        return;
    char id[VIRTIO_BLK_ID_BYTES + 1];
    const volatile uint8_t *src = blk.data;
    size_t n = 0;
    for (; n < VIRTIO_BLK_ID_BYTES && src[n]; n++)
        id[n] = (src[n] > 0x20 && src[n] < 0x7f) ? (char)src[n] : '?';
    id[n] = '\0';
    fw_println("DISK %s id \"%s\"", blk.name, id);
}

bool virtio_blk_init(struct virtio_dev *d, const char *name)
{
    memset(&blk, 0, sizeof blk);
    blk.d = d;
    blk.name = name;
    blk.name_hash = lpv_disk_name_hash(name);
    if (!d->device || d->device_len < 8) {
        fw_println("FAIL disk %s: virtio-blk %s without a device configuration", name, d->label);
        fw_note_failure();
        return false;
    }
    if (!virtio_negotiate(d, (1ull << VIRTIO_BLK_F_FLUSH_BIT) | (1ull << VIRTIO_BLK_F_RO_BIT)))
        return false;
    if (d->features & (1ull << VIRTIO_BLK_F_RO_BIT)) {
        fw_println("FAIL disk %s: virtio-blk %s is read-only", name, d->label);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    blk.flush = (d->features & (1ull << VIRTIO_BLK_F_FLUSH_BIT)) != 0;
    blk.capacity = config_u64(d, 0);
    if (!virtio_setup_queue(d, &blk.q, 0, BLK_QUEUE_MAX))
        return false;
    if (blk.q.size < 3) {
        fw_println("FAIL disk %s: queue of %u entries cannot hold a request", name, blk.q.size);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    blk.inflight = blk.q.size / 3;
    if (blk.inflight > BLK_INFLIGHT)
        blk.inflight = BLK_INFLIGHT;
    blk.meta = dma_alloc(sizeof(struct blk_slot_meta) * blk.inflight, 64);
    blk.data = dma_alloc((uint64_t)LPV_DISK_BLOCK_BYTES * blk.inflight, 4096);
    if (!blk.meta || !blk.data) {
        fw_println("FAIL disk %s: DMA area exhausted", name);
        fw_note_failure();
        virtio_fail(d);
        return false;
    }
    virtio_driver_ok(d);

    uint64_t bytes = blk.capacity * SECTOR_BYTES;
    if (blk.capacity > LPV_DISK_TEST_BYTES / SECTOR_BYTES)
        bytes = LPV_DISK_TEST_BYTES;
    blk.blocks = bytes / LPV_DISK_BLOCK_BYTES;
    fw_println("DISK %s capacity %lu sectors blocks %lu queue %u inflight %u flush %s", name,
               blk.capacity, blk.blocks, blk.q.size, blk.inflight, blk.flush ? "yes" : "no");
    get_id();
    if (blk.broken)
        return false;
    if (blk.blocks == 0) {
        fw_println("FAIL disk %s: capacity %lu sectors is less than one block", name, blk.capacity);
        fw_note_failure();
        return false;
    }
    return true;
}

void virtio_blk_pass(uint64_t pass)
{
    if (blk.broken)
        return;
    /* write, one request in flight (see the top) */
    for (uint64_t b = 0; b < blk.blocks; b++) {
        fill_block(blk.data, b, pass);
        build(0, VIRTIO_BLK_T_OUT, b * SECTORS_PER_BLOCK, LPV_DISK_BLOCK_BYTES, false);
        if (!run_batch(1, VIRTIO_BLK_T_OUT, b, pass))
            return;
    }
    if (blk.flush) {
        build(0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
        if (!run_batch(1, VIRTIO_BLK_T_FLUSH, 0, pass))
            return;
    }
    /* read back and compare */
    uint64_t bad = 0;
    for (uint64_t b = 0; b < blk.blocks;) {
        uint32_t n = 0;
        for (; n < blk.inflight && b + n < blk.blocks; n++) {
            memset(blk.data + (uint64_t)n * LPV_DISK_BLOCK_BYTES, 0, LPV_DISK_BLOCK_BYTES);
            build(n, VIRTIO_BLK_T_IN, (b + n) * SECTORS_PER_BLOCK, LPV_DISK_BLOCK_BYTES, true);
        }
        if (!run_batch(n, VIRTIO_BLK_T_IN, b, pass))
            return;
        for (uint32_t k = 0; k < n; k++)
            bad = check_block(blk.data + (uint64_t)k * LPV_DISK_BLOCK_BYTES, b + k, pass, bad);
        b += n;
    }
    if (bad) {
        fw_println("FAIL disk %s pass=%lu mismatches=%lu", blk.name, pass, bad);
        blk_fail_stop();
        return;
    }
    blk.last_pass = pass;
    fw_println("DISK %s pass %lu ok blocks %lu", blk.name, pass, blk.blocks);
}

void virtio_blk_final(void)
{
    if (blk.broken || blk.last_pass == 0)
        return;
    fw_println("DISK %s final pass %lu blocks %lu", blk.name, blk.last_pass, blk.blocks);
}
