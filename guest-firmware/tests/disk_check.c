/*
 * Host-side check of a disk image the firmware's virtio-blk test wrote: the first BLOCKS 4 KiB
 * blocks must hold exactly pass PASS's pattern for LPAR NAME (lpv_disk_word from abi.h, the
 * same function the firmware uses).
 * usage: lparvisor-fw-disk-check IMAGE NAME PASS BLOCKS
 * Exit 0 and "disk-check: ok ..." when every word matches, 1 with the first mismatch otherwise,
 * 2 on a usage or I/O error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lparvisor/abi.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s IMAGE NAME PASS BLOCKS\n", argv[0]);
        return 2;
    }
    const char *name = argv[2];
    const uint64_t pass = strtoull(argv[3], NULL, 10), blocks = strtoull(argv[4], NULL, 10);
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    uint64_t buf[LPV_DISK_WORDS_PER_BLOCK];
    for (uint64_t b = 0; b < blocks; b++) {
        if (fread(buf, 1, sizeof buf, f) != sizeof buf) {
            printf("disk-check: %s ends before block %" PRIu64 "\n", argv[1], b);
            fclose(f);
            return 1;
        }
        for (uint64_t w = 0; w < LPV_DISK_WORDS_PER_BLOCK; w++) {
            const uint64_t exp = lpv_disk_word(name, b, pass, w);
            uint64_t got;
            memcpy(&got, &buf[w], sizeof got); /* little-endian host assumed (x86-64) */
            if (got != exp) {
                printf("disk-check: block %" PRIu64 " word %" PRIu64 ": expected 0x%016" PRIx64
                       " found 0x%016" PRIx64 "\n",
                       b, w, exp, got);
                fclose(f);
                return 1;
            }
        }
    }
    fclose(f);
    printf("disk-check: ok %s pass %" PRIu64 " blocks %" PRIu64 "\n", name, pass, blocks);
    return 0;
}
