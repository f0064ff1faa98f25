/*
 * lparvisor-firmware: the deterministic witness of the project's tests.
 *
 * Every vCPU owns one slice of the test area [test_area_gpa, storage_bytes). It fills the slice
 * with a pattern that depends on (guest-physical address, generation, LPAR seed), then runs
 * rounds forever: verify the whole slice against the previous generation, check and re-set the
 * storage keys (when the hypervisor serves them), rewrite the working set (or the whole slice)
 * with the next generation, paced by the TSC if a rate is given. Results go to COM1 as one line
 * per round; docs/paravirt-interface.md lists the exact line formats.
 *
 * Runs at CPL3 under lparvisor: no privileged instruction may appear on this path, and no
 * SIMD/x87 anywhere (the build forbids it).
 */
#include "fw.h"
#include "layout.h"

_Static_assert(FW_STACK_TOP == LPV_STACK_TOP, "layout.h out of sync with abi.h");
_Static_assert(FW_SEL_KERNEL_CODE == LPV_SEL_KERNEL_CODE, "layout.h out of sync with abi.h");
_Static_assert(FW_SEL_KERNEL_DATA == LPV_SEL_KERNEL_DATA, "layout.h out of sync with abi.h");
_Static_assert(sizeof(struct lpv_skey_request) == 40, "skey request layout");
_Static_assert(LPV_TEST_AREA_GPA >= LPV_STACK_TOP, "stacks below the test area");

#define PAGE_SIZE 4096ull
#define PAGE_SHIFT 12
#define UNIT_PAGES 512ull /* 2 MiB: the preferred slicing unit */
#define PATTERN_MUL LPV_PATTERN_MUL
#define REPORT_MAX 4 /* detailed FAIL lines per kind, round and vCPU */
#define KEY_CHUNK_PAGES 4096u /* pages per storage-key request (16 MiB) */
#define PACE_BATCH_PAGES 16u
#define KEY_COMPARE_MASK (LPV_KEY_ACCESS_MASK | LPV_KEY_FETCH) /* R and C are the host's */
#define SKEY_STATUS_UNSERVED 1 /* preset; a served request overwrites it */

/* ---- state shared by the vCPUs: in .data so that it is valid even if .bss were not zeroed ---- */
static uint32_t banner_done __attribute__((section(".data")));
static uint32_t done_count __attribute__((section(".data")));
static uint32_t failure_count __attribute__((section(".data")));

/* ---- per-vCPU storage-key request and buffer (below 4 GiB, inside the image's .bss) ---- */
struct skey_slot {
    struct lpv_skey_request req;
} __attribute__((aligned(64)));
static struct skey_slot skey_slots[LPV_MAX_VCPUS];
static uint8_t key_bufs[LPV_MAX_VCPUS][KEY_CHUNK_PAGES] __attribute__((aligned(64)));

struct ctx {
    uint32_t cpu;
    uint32_t ncpu;
    uint64_t seed;
    uint64_t lo, hi; /* this vCPU's slice */
    uint64_t ws_hi; /* rewritten each round: [lo, ws_hi) */
    uint64_t tsc_khz;
    uint64_t rate; /* pages per second, 0 = unpaced */
    uint64_t round_limit;
    bool keys;
};

/* ---------------------------------------------------------------- progress (benchmarks) */

/* LPV_BOOT_FLAG_REPORT_PROGRESS: each vCPU notes a checkpoint every PROGRESS_CHUNK bytes verified,
 * every rewrite batch and every spin of the pacing wait, and about every 100 ms of TSC time prints
 * "progress bytes=B max_gap_us=G cpu=C": B = bytes verified + rewritten since boot, G = the
 * longest time between two consecutive checkpoints since its previous line (a stop of the vCPU
 * shows there). docs/paravirt-interface.md, "Progress lines". */
#define PROGRESS_CHUNK (64u * 1024u)
struct progress {
    uint64_t bytes;
    uint64_t last_tsc; /* the previous checkpoint */
    uint64_t line_tsc; /* the previous line */
    uint64_t max_gap; /* TSC ticks, since the previous line */
} __attribute__((aligned(64)));
static struct progress progress_of[LPV_MAX_VCPUS];
static uint64_t progress_period; /* TSC ticks between two lines; 0: no progress lines */

static void progress_start(const struct ctx *c)
{
    struct progress *p = &progress_of[c->cpu];
    p->last_tsc = p->line_tsc = rdtsc();
}

static void checkpoint(const struct ctx *c, uint64_t bytes)
{
    if (!progress_period)
        return;
    struct progress *p = &progress_of[c->cpu];
    const uint64_t now = rdtsc();
    const uint64_t gap = now - p->last_tsc;
    if (gap > p->max_gap)
        p->max_gap = gap;
    p->last_tsc = now;
    p->bytes += bytes;
    if (now - p->line_tsc < progress_period)
        return;
    fw_println("progress bytes=%lu max_gap_us=%lu cpu=%u", p->bytes, p->max_gap * 1000 / c->tsc_khz,
               c->cpu);
    p->line_tsc = now;
    p->max_gap = 0;
}

/* ---------------------------------------------------------------- helpers */

void fw_exit(uint8_t code)
{
    outb(LPV_PORT_DEBUG_EXIT, code);
    for (;;)
        cpu_relax();
}

static __attribute__((noreturn)) void park(void)
{
    for (;;)
        cpu_relax();
}

void fw_note_failure(void)
{
    __atomic_add_fetch(&failure_count, 1, __ATOMIC_RELAXED);
}

static void note_failure(void)
{
    fw_note_failure();
}

/* Seed and pattern: lpv_pattern_seed / lpv_pattern_word (abi.h), shared with the virtio-mem
 * driver (virtio_mem.c) and any host-side checker. */
static inline uint64_t pattern(uint64_t gpa, uint64_t gen, uint64_t seed)
{
    return lpv_pattern_word(gpa, gen, seed);
}

static inline uint8_t key_for(uint64_t pfn, uint64_t round)
{
    return (uint8_t)((((pfn + round) & 0xf) << 4) | (((pfn >> 3) & 1) ? LPV_KEY_FETCH : 0));
}

/* Splits `total` pages among `n` vCPUs: whole 2 MiB units where every vCPU gets at least one,
 * the pages left over go to the last vCPU; otherwise page by page. */
static void split(uint64_t total, uint32_t n, uint32_t i, uint64_t *first, uint64_t *count)
{
    uint64_t units = total / UNIT_PAGES;
    uint64_t gran = UNIT_PAGES, items = units;
    if (units < n) {
        gran = 1;
        items = total;
    }
    uint64_t per = items / n, extra = items % n;
    uint64_t start = i * per + (i < extra ? i : extra);
    uint64_t cnt = per + (i < extra ? 1 : 0);
    *first = start * gran;
    *count = cnt * gran;
    if (i == n - 1)
        *count += total - items * gran;
}

/* ---------------------------------------------------------------- pattern */

static void fill(uint64_t lo, uint64_t hi, uint64_t gen, uint64_t seed)
{
    volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)lo;
    const uint64_t x = (gen << 48) ^ seed;
    const uint64_t step = 8 * PATTERN_MUL;
    uint64_t m = lo * PATTERN_MUL;
    for (uint64_t a = lo; a < hi; a += 32, p += 4) {
        p[0] = m ^ x;
        m += step;
        p[1] = m ^ x;
        m += step;
        p[2] = m ^ x;
        m += step;
        p[3] = m ^ x;
        m += step;
    }
}

static void rewrite(const struct ctx *c, uint64_t gen)
{
    if (!c->rate || !c->tsc_khz) {
        if (!progress_period) {
            fill(c->lo, c->ws_hi, gen, c->seed);
            return;
        }
        for (uint64_t a = c->lo; a < c->ws_hi;) {
            const uint64_t b = a + PACE_BATCH_PAGES * PAGE_SIZE < c->ws_hi
                                   ? a + PACE_BATCH_PAGES * PAGE_SIZE
                                   : c->ws_hi;
            fill(a, b, gen, c->seed);
            checkpoint(c, b - a);
            a = b;
        }
        return;
    }
    const uint64_t ticks_per_sec = c->tsc_khz * 1000;
    const uint64_t t0 = rdtsc();
    uint64_t pages = 0;
    for (uint64_t a = c->lo; a < c->ws_hi;) {
        uint64_t b = a + PACE_BATCH_PAGES * PAGE_SIZE;
        if (b > c->ws_hi)
            b = c->ws_hi;
        fill(a, b, gen, c->seed);
        checkpoint(c, b - a);
        pages += (b - a) / PAGE_SIZE;
        const uint64_t due = t0 + pages * ticks_per_sec / c->rate;
        while ((int64_t)(rdtsc() - due) < 0) {
            cpu_relax();
            checkpoint(c, 0);
        }
        a = b;
    }
}

static void report_word(const struct ctx *c, uint64_t a, uint64_t gen, uint64_t round,
                        uint64_t *bad)
{
    const uint64_t got = *(volatile uint64_t *)(uintptr_t)a;
    const uint64_t exp = pattern(a, gen, c->seed);
    if (got == exp)
        return;
    if (*bad < REPORT_MAX)
        fw_println("FAIL data addr=0x%lx expected=0x%016lx got=0x%016lx round=%lu cpu=%u", a, exp,
                   got, round, c->cpu);
    (*bad)++;
}

/* Verifies [lo, hi) against generation `gen`; returns the number of bad words (and prints the
 * first few, sharing the REPORT_MAX budget through *bad). */
static void verify(const struct ctx *c, uint64_t lo, uint64_t hi, uint64_t gen, uint64_t round,
                   uint64_t *bad)
{
    const volatile uint64_t *p = (const volatile uint64_t *)(uintptr_t)lo;
    const uint64_t x = (gen << 48) ^ c->seed;
    const uint64_t step = 8 * PATTERN_MUL;
    uint64_t m = lo * PATTERN_MUL;
    for (uint64_t a = lo; a < hi; a += 32, p += 4) {
        const uint64_t e0 = m ^ x, e1 = (m + step) ^ x, e2 = (m + 2 * step) ^ x,
                       e3 = (m + 3 * step) ^ x;
        m += 4 * step;
        const uint64_t d = (p[0] ^ e0) | (p[1] ^ e1) | (p[2] ^ e2) | (p[3] ^ e3);
        if (__builtin_expect(d != 0, 0)) {
            for (uint64_t w = 0; w < 4; w++)
                report_word(c, a + 8 * w, gen, round, bad);
        }
    }
}

/* verify() in PROGRESS_CHUNK pieces with a checkpoint after each, when progress lines are on. */
static void verify_range(const struct ctx *c, uint64_t lo, uint64_t hi, uint64_t gen,
                         uint64_t round, uint64_t *bad)
{
    if (!progress_period) {
        verify(c, lo, hi, gen, round, bad);
        return;
    }
    for (uint64_t a = lo; a < hi;) {
        const uint64_t b = a + PROGRESS_CHUNK < hi ? a + PROGRESS_CHUNK : hi;
        verify(c, a, b, gen, round, bad);
        checkpoint(c, b - a);
        a = b;
    }
}

/* ---------------------------------------------------------------- storage keys */

/* One request = one exit: the hypervisor reads the struct at the address written to the port,
 * serves the whole range and writes `status` before the `outl` completes. */
static bool skey_call(const struct ctx *c, uint32_t op, uint64_t first_gpa, uint64_t pages,
                      uint64_t round)
{
    struct lpv_skey_request *r = &skey_slots[c->cpu].req;
    r->op = op;
    r->first_gpa = first_gpa;
    r->page_count = pages;
    r->key = 0;
    r->buffer_gpa = (uint64_t)(uintptr_t)key_bufs[c->cpu];
    __atomic_store_n(&r->status, SKEY_STATUS_UNSERVED, __ATOMIC_RELAXED);
    outl(LPV_PORT_STORAGE_KEY, (uint32_t)(uintptr_t)r); /* "memory" clobber orders the stores */
    const int32_t st = __atomic_load_n(&r->status, __ATOMIC_RELAXED);
    if (st == LPV_SKEY_OK)
        return true;
    fw_println("FAIL skey status=%d op=%u addr=0x%lx pages=%lu round=%lu cpu=%u", st, op, first_gpa,
               pages, round, c->cpu);
    note_failure();
    return false;
}

/* Reads back the keys of the slice and compares them with those set for `key_round`.
 * Returns the number of problems (bad keys + failed requests). */
static uint64_t check_keys(const struct ctx *c, uint64_t key_round, uint64_t round)
{
    uint64_t bad = 0, errors = 0;
    uint8_t *buf = key_bufs[c->cpu];
    for (uint64_t a = c->lo; a < c->hi;) {
        uint64_t n = (c->hi - a) / PAGE_SIZE;
        if (n > KEY_CHUNK_PAGES)
            n = KEY_CHUNK_PAGES;
        if (!skey_call(c, LPV_SKEY_GET_EACH, a, n, round)) {
            errors++;
            a += n * PAGE_SIZE;
            continue;
        }
        for (uint64_t i = 0; i < n; i++) {
            const uint64_t pfn = (a >> PAGE_SHIFT) + i;
            const uint8_t exp = key_for(pfn, key_round);
            const uint8_t got = ((volatile uint8_t *)buf)[i];
            if ((got & KEY_COMPARE_MASK) != exp) {
                if (bad < REPORT_MAX)
                    fw_println("FAIL key addr=0x%lx expected=0x%02x got=0x%02x round=%lu cpu=%u",
                               pfn << PAGE_SHIFT, exp, got, round, c->cpu);
                bad++;
            }
        }
        a += n * PAGE_SIZE;
    }
    if (bad) {
        fw_println("FAIL key mismatches=%lu round=%lu cpu=%u", bad, round, c->cpu);
        note_failure();
    }
    return bad + errors;
}

static void set_keys(const struct ctx *c, uint64_t key_round, uint64_t round)
{
    uint8_t *buf = key_bufs[c->cpu];
    for (uint64_t a = c->lo; a < c->hi;) {
        uint64_t n = (c->hi - a) / PAGE_SIZE;
        if (n > KEY_CHUNK_PAGES)
            n = KEY_CHUNK_PAGES;
        for (uint64_t i = 0; i < n; i++)
            buf[i] = key_for((a >> PAGE_SHIFT) + i, key_round);
        skey_call(c, LPV_SKEY_SET_EACH, a, n, round);
        a += n * PAGE_SIZE;
    }
}

/* ---------------------------------------------------------------- main */

static uint32_t end_flags; /* LPV_BOOT_FLAG_*_AT_END: how the firmware ends after round_limit */

static __attribute__((noreturn)) void finish(const struct ctx *c, uint64_t rounds)
{
    if (__atomic_add_fetch(&done_count, 1, __ATOMIC_ACQ_REL) == c->ncpu) {
        const uint32_t f = __atomic_load_n(&failure_count, __ATOMIC_ACQUIRE);
        fw_println("lparvisor-firmware: done rounds=%lu failures=%u", rounds, f);
        if (end_flags & LPV_BOOT_FLAG_REBOOT_AT_END) {
            fw_println("lparvisor-firmware: rebooting (i8042 reset)");
            outb(LPV_PORT_I8042_COMMAND, 0xfe);
            park();
        }
        if (end_flags & LPV_BOOT_FLAG_TRIPLE_FAULT_AT_END) {
            fw_println("lparvisor-firmware: triple fault (UD2 without an IDT)");
            __asm__ volatile("ud2");
        }
        fw_exit(f ? 1 : 0);
    }
    park();
}

static __attribute__((noreturn)) void run(struct ctx *c)
{
    if (c->lo == c->hi) {
        fw_println("idle cpu=%u (empty slice)", c->cpu);
        if (c->round_limit)
            finish(c, 0);
        park();
    }

    fill(c->lo, c->hi, 0, c->seed); /* round 0: the first full fill, not paced */
    progress_start(c);
    if (c->keys)
        set_keys(c, 0, 0);

    for (uint64_t round = 1;; round++) {
        uint64_t bad = 0;
        verify_range(c, c->lo, c->ws_hi, round - 1, round, &bad);
        verify_range(c, c->ws_hi, c->hi, 0, round, &bad);
        if (bad) {
            fw_println("FAIL data mismatches=%lu round=%lu cpu=%u", bad, round, c->cpu);
            note_failure();
        }
        uint64_t key_bad = c->keys ? check_keys(c, round - 1, round) : 0;
        if (!bad && !key_bad)
            fw_println("verify ok round=%lu cpu=%u", round, c->cpu);
        if (c->cpu == 0)
            fw_devices_round(round); /* disk pass `round` (virtio-blk), between two verifications */
        if (c->round_limit && round >= c->round_limit) {
            if (c->cpu == 0)
                fw_devices_finish();
            finish(c, round);
        }
        if (c->keys)
            set_keys(c, round, round);
        rewrite(c, round);
    }
}

void fw_main(const struct lpv_boot_info *bi, uint64_t cpu)
{
    if (bi->magic != LPV_BOOT_MAGIC) {
        if (cpu == 0) {
            fw_println("FAIL boot-info magic");
            fw_exit(1);
        }
        park();
    }
    const uint32_t ncpu = bi->vcpu_count;
    if (ncpu == 0 || ncpu > LPV_MAX_VCPUS || cpu >= ncpu) {
        if (cpu == 0 || cpu >= ncpu) {
            fw_println("FAIL boot-info vcpu_count=%u cpu=%lu", ncpu, cpu);
            fw_exit(1);
        }
        park();
    }
    const uint64_t area_lo = (bi->test_area_gpa + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    const uint64_t area_hi = bi->storage_bytes & ~(PAGE_SIZE - 1);
    if (area_lo < LPV_TEST_AREA_GPA || area_lo >= area_hi) {
        if (cpu == 0) {
            fw_println("FAIL boot-info test_area=0x%lx storage=0x%lx", bi->test_area_gpa,
                       bi->storage_bytes);
            fw_exit(1);
        }
        park();
    }

    char name[LPV_NAME_MAX];
    for (size_t i = 0; i < LPV_NAME_MAX; i++)
        name[i] = bi->name[i];
    name[LPV_NAME_MAX - 1] = '\0';

    if (bi->flags & LPV_BOOT_FLAG_CONSOLE_FLOOD) {
        if (cpu != 0)
            park();
        fw_println("lparvisor-firmware: %s console flood (LPV_BOOT_FLAG_CONSOLE_FLOOD)", name);
        fw_console_flood();
    }

    end_flags = bi->flags & (LPV_BOOT_FLAG_REBOOT_AT_END | LPV_BOOT_FLAG_TRIPLE_FAULT_AT_END);
    if ((bi->flags & LPV_BOOT_FLAG_REPORT_PROGRESS) && bi->tsc_khz)
        progress_period = bi->tsc_khz * 100; /* 100 ms; every vCPU writes the same value */
    struct ctx c = {
        .cpu = (uint32_t)cpu,
        .ncpu = ncpu,
        .seed = lpv_pattern_seed(name),
        .tsc_khz = bi->tsc_khz,
        .rate = bi->rewrite_pages_per_sec,
        .round_limit = bi->round_limit,
        .keys = (bi->flags & LPV_BOOT_FLAG_STORAGE_KEYS) != 0,
    };

    const uint64_t total = (area_hi - area_lo) / PAGE_SIZE;
    uint64_t first, count;
    split(total, ncpu, c.cpu, &first, &count);
    c.lo = area_lo + first * PAGE_SIZE;
    c.hi = c.lo + count * PAGE_SIZE;
    c.ws_hi = c.hi;
    if (bi->working_set_bytes) {
        uint64_t ws_total = (bi->working_set_bytes + PAGE_SIZE - 1) / PAGE_SIZE;
        if (ws_total > total)
            ws_total = total;
        uint64_t ws_first, ws_count;
        split(ws_total, ncpu, c.cpu, &ws_first, &ws_count);
        if (ws_count > count)
            ws_count = count;
        c.ws_hi = c.lo + ws_count * PAGE_SIZE;
    }

    if (cpu == 0) {
        fw_println(
            "lparvisor-firmware: %s storage=%luMiB vcpus=%u test_area=0x%lx-0x%lx keys=%s rate=%lu "
            "working_set=%luKiB tsc_khz=%lu round_limit=%lu seed=0x%016lx",
            name, bi->storage_bytes >> 20, ncpu, area_lo, area_hi, c.keys ? "on" : "off", c.rate,
            bi->working_set_bytes >> 10, c.tsc_khz, c.round_limit, c.seed);
        /* PCI scan, virtio set-up, RNG test, disk id (`name` lives on: fw_main never returns) */
        fw_devices_init(bi, name);
        __atomic_store_n(&banner_done, 1, __ATOMIC_RELEASE);
    } else {
        while (!__atomic_load_n(&banner_done, __ATOMIC_ACQUIRE))
            cpu_relax();
    }
    fw_println("slice cpu=%u range=0x%lx-0x%lx rewrite=0x%lx-0x%lx", c.cpu, c.lo, c.hi, c.lo,
               c.ws_hi);
    run(&c);
}
