/*
 * The Linux guest's workload (scripts/build-linux-guest.sh puts it in the initramfs as
 * /bin/workload): proves from inside the guest that its memory and its virtio disk keep what
 * was written, also across a relocation (MVSTOR) of the LPAR while it runs (loop mode).
 *
 *   workload [-m MiB] [-l ROUNDS] [-d DEVICE] [-D]
 *     -m MiB     memory to fill and verify (default 64)
 *     -l ROUNDS  loop mode: verify the memory (and disk) ROUNDS times, rewriting a slice
 *                with a new pattern each round so that pages stay dirty; 0 = forever
 *     -d DEVICE  block device for the disk test (default /dev/vda; skipped if absent)
 *     -D         no disk test
 *
 * Output lines, for the host's tests to look for:
 *   LPARVISOR-WORKLOAD: memory ok <MiB> MiB checksum <hex>
 *   LPARVISOR-WORKLOAD: disk ok <device> <bytes> bytes   (or: disk absent <device>)
 *   LPARVISOR-WORKLOAD: round <n> ok checksum <hex>      (loop mode)
 *   LPARVISOR-WORKLOAD: FAIL <what>                      (and exit status 1)
 *   LPARVISOR-WORKLOAD: done
 * Built with gcc -static -O2: the initramfs has no C library.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TAG "LPARVISOR-WORKLOAD: "
#define DISK_TEST_BYTES (1024 * 1024)

static int failures;

__attribute__((format(printf, 1, 2))) static void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf(TAG "FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    failures++;
}

/* splitmix64: a different, reproducible 64-bit value for every (seed, index). */
static uint64_t pattern(uint64_t seed, uint64_t index) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + index + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t mix(uint64_t sum, uint64_t word) {
    return (sum ^ word) * 0x100000001b3ull + (sum >> 29);
}

/* seeds[s] is the pattern seed of slice s (the memory is cut into 1 MiB slices). */
#define SLICE_WORDS ((1024 * 1024) / 8)

static void fill_slice(uint64_t* mem, uint64_t slice, uint64_t seed) {
    uint64_t* p = mem + slice * SLICE_WORDS;
    for (uint64_t i = 0; i < SLICE_WORDS; i++) p[i] = pattern(seed, slice * SLICE_WORDS + i);
}

/* Verifies every word against its expected value; returns the checksum of what was read. */
static uint64_t verify(const uint64_t* mem, uint64_t slices, const uint64_t* seeds) {
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint64_t s = 0; s < slices; s++) {
        const volatile uint64_t* p = mem + s * SLICE_WORDS;
        int reported = 0;
        for (uint64_t i = 0; i < SLICE_WORDS; i++) {
            uint64_t want = pattern(seeds[s], s * SLICE_WORDS + i), got = p[i];
            if (got != want && !reported) {
                fail("memory at offset 0x%" PRIx64 ": read %016" PRIx64 " expected %016" PRIx64,
                     (s * SLICE_WORDS + i) * 8, got, want);
                reported = 1; /* one line per slice is enough */
            }
            sum = mix(sum, got);
        }
    }
    return sum;
}

/* Writes a pattern to the start of the device, reads it back past the page cache, compares. */
static void disk_test(const char* device, unsigned round) {
    struct stat st;
    if (stat(device, &st) != 0) {
        printf(TAG "disk absent %s\n", device);
        return;
    }
    int direct = 1;
    int fd = open(device, O_RDWR | O_DIRECT | O_SYNC);
    if (fd < 0 && errno == EINVAL) {
        direct = 0;
        fd = open(device, O_RDWR | O_SYNC);
    }
    if (fd < 0) {
        fail("disk %s: cannot open: %s", device, strerror(errno));
        return;
    }
    uint64_t size = 0;
    if (S_ISBLK(st.st_mode) ? ioctl(fd, BLKGETSIZE64, &size) != 0
                            : (size = (uint64_t)st.st_size, 0))
        size = 0;
    uint64_t bytes = size < DISK_TEST_BYTES ? size & ~(uint64_t)4095 : DISK_TEST_BYTES;
    if (bytes == 0) {
        fail("disk %s: size %" PRIu64 " is too small", device, size);
        close(fd);
        return;
    }
    uint64_t *out = NULL, *in = NULL;
    if (posix_memalign((void**)&out, 4096, bytes) || posix_memalign((void**)&in, 4096, bytes)) {
        fail("disk %s: out of memory", device);
        close(fd);
        return;
    }
    for (uint64_t i = 0; i < bytes / 8; i++) out[i] = pattern(0xd15c + round, i);
    if (pwrite(fd, out, bytes, 0) != (ssize_t)bytes || fsync(fd) != 0) {
        fail("disk %s: write of %" PRIu64 " bytes failed: %s", device, bytes, strerror(errno));
    } else {
        if (!direct) {
            ioctl(fd, BLKFLSBUF, 0); /* drop the cached copy so the read reaches the device */
            posix_fadvise(fd, 0, bytes, POSIX_FADV_DONTNEED);
        }
        memset(in, 0, bytes);
        if (pread(fd, in, bytes, 0) != (ssize_t)bytes) {
            fail("disk %s: read of %" PRIu64 " bytes failed: %s", device, bytes, strerror(errno));
        } else if (memcmp(in, out, bytes) != 0) {
            uint64_t i = 0;
            while (in[i] == out[i]) i++;
            fail("disk %s: read back differs at byte %" PRIu64 " (read %016" PRIx64 ")", device,
                 i * 8, in[i]);
        } else {
            printf(TAG "disk ok %s %" PRIu64 " bytes\n", device, bytes);
        }
    }
    free(out);
    free(in);
    close(fd);
}

int main(int argc, char** argv) {
    uint64_t mib = 64;
    long rounds = -1; /* -1: no loop mode */
    const char* device = "/dev/vda";
    int disk = 1, opt;
    while ((opt = getopt(argc, argv, "m:l:d:Dh")) != -1) {
        switch (opt) {
            case 'm':
                mib = strtoull(optarg, NULL, 0);
                break;
            case 'l':
                rounds = strtol(optarg, NULL, 0);
                break;
            case 'd':
                device = optarg;
                break;
            case 'D':
                disk = 0;
                break;
            default:
                fprintf(stderr, "usage: %s [-m MiB] [-l ROUNDS (0: forever)] [-d DEVICE] [-D]\n",
                        argv[0]);
                return opt == 'h' ? 0 : 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (mib == 0) mib = 1;

    uint64_t bytes = mib << 20;
    uint64_t* mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t* seeds = calloc(mib, sizeof *seeds);
    if (mem == MAP_FAILED || !seeds) {
        printf(TAG "FAIL cannot allocate %" PRIu64 " MiB: %s\n", mib, strerror(errno));
        return 1;
    }
    for (uint64_t s = 0; s < mib; s++) {
        seeds[s] = 1;
        fill_slice(mem, s, seeds[s]);
    }
    uint64_t sum = verify(mem, mib, seeds);
    if (failures == 0) printf(TAG "memory ok %" PRIu64 " MiB checksum %016" PRIx64 "\n", mib, sum);
    if (disk) disk_test(device, 0);

    for (long round = 1; rounds >= 0 && (rounds == 0 || round <= rounds); round++) {
        /* Rewrite an eighth of the slices with a new seed: keeps pages dirty for a live move. */
        for (uint64_t k = 0; k < (mib + 7) / 8; k++) {
            uint64_t s = (round * 7919 + k * 8) % mib;
            seeds[s] = seeds[s] * 31 + (uint64_t)round;
            fill_slice(mem, s, seeds[s]);
        }
        int before = failures;
        sum = verify(mem, mib, seeds);
        if (disk && round % 8 == 0) disk_test(device, (unsigned)round);
        if (failures == before) printf(TAG "round %ld ok checksum %016" PRIx64 "\n", round, sum);
        if (failures > 20) break; /* memory is broken: do not flood the console */
    }

    printf(TAG "%s\n", failures ? "FAIL see above" : "done");
    return failures ? 1 : 0;
}
