/*
 * The firmware's virtio-rng test (vCPU 0, once at start): RNG_REQUESTS requests of RNG_BYTES
 * each on the one request queue (a single device-writable descriptor), polled; the device may
 * return fewer bytes than asked. Passes if every request completes and the bytes returned are
 * not all zero: "RNG <name> ok <n> bytes" (n = bytes returned in total).
 */
#include "fw.h"

#define RNG_BYTES 64u
#define RNG_REQUESTS 4u
#define RNG_TIMEOUT_MS 20000

void virtio_rng_test(struct virtio_dev *d, const char *name)
{
    struct virtqueue q;
    if (!virtio_negotiate(d, 0) || !virtio_setup_queue(d, &q, 0, 4))
        return;
    volatile uint8_t *buf = dma_alloc(RNG_BYTES, 64);
    if (!buf) {
        fw_println("FAIL rng %s: DMA area exhausted", name);
        fw_note_failure();
        virtio_fail(d);
        return;
    }
    virtio_driver_ok(d);

    uint64_t total = 0, nonzero = 0;
    for (uint32_t r = 0; r < RNG_REQUESTS; r++) {
        for (uint32_t i = 0; i < RNG_BYTES; i++)
            buf[i] = 0;
        q.desc[0].addr = (uint64_t)(uintptr_t)buf;
        q.desc[0].len = RNG_BYTES;
        q.desc[0].flags = VRING_DESC_F_WRITE;
        q.desc[0].next = 0;
        vq_submit(&q, 0);
        struct vring_used_elem e;
        const uint64_t deadline = fw_deadline_ms(RNG_TIMEOUT_MS);
        while (!vq_poll(&q, &e)) {
            if (fw_expired(deadline)) {
                fw_println("FAIL rng %s timeout request=%u", name, r);
                fw_note_failure();
                return;
            }
            cpu_relax();
        }
        if (e.id != 0 || e.len > RNG_BYTES) {
            fw_println("FAIL rng %s bad used id=%u len=%u request=%u", name, e.id, e.len, r);
            fw_note_failure();
            return;
        }
        total += e.len;
        for (uint32_t i = 0; i < e.len; i++)
            nonzero += buf[i] != 0;
    }
    if (total == 0 || nonzero == 0) {
        fw_println("FAIL rng %s: %lu bytes, all zero", name, total);
        fw_note_failure();
        return;
    }
    fw_println("RNG %s ok %lu bytes", name, total);
}
