/*
 * Serial console on the 8250 at COM1, polled (no interrupts). Each line is formatted on the
 * caller's stack first and then written under a spinlock in guest memory, so lines of different
 * vCPUs never interleave. Every port access is one exit under lparvisor (about 25 us on PVM),
 * hence the short lines.
 */
#include "fw.h"

#define COM1_THR (LPV_PORT_COM1 + 0)
#define COM1_LSR (LPV_PORT_COM1 + 5)
#define LSR_THR_EMPTY 0x20
#define LSR_POLL_LIMIT 100000 /* give up waiting for a UART that never reports THR empty */

/* In .data, not .bss, so that it is free (0) even if a loader does not zero .bss. */
static uint32_t console_lock __attribute__((section(".data")));

static void lock(void)
{
    while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&console_lock, __ATOMIC_RELAXED))
            cpu_relax();
}

static void unlock(void)
{
    __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

static void uart_putc(char c)
{
    for (int i = 0; i < LSR_POLL_LIMIT; i++) {
        if (inb(COM1_LSR) & LSR_THR_EMPTY)
            break;
        cpu_relax();
    }
    outb(COM1_THR, (uint8_t)c);
}

struct out {
    char *buf;
    size_t size;
    size_t len; /* characters produced (may exceed size - 1) */
};

static void put(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void put_u64(struct out *o, uint64_t v, unsigned base, int width, char pad)
{
    char tmp[24];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    for (; width > n; width--)
        put(o, pad);
    while (n)
        put(o, tmp[--n]);
}

int fw_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            put(&o, *p);
            continue;
        }
        p++;
        char pad = ' ';
        int width = 0, lng = 0;
        if (*p == '0') {
            pad = '0';
            p++;
        }
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (*p++ - '0');
        while (*p == 'l') {
            lng++;
            p++;
        }
        switch (*p) {
        case 'd': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            uint64_t m = (uint64_t)v;
            if (v < 0) {
                put(&o, '-');
                m = 0 - m;
            }
            put_u64(&o, m, 10, width, pad);
            break;
        }
        case 'u':
        case 'x': {
            uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
            put_u64(&o, v, *p == 'u' ? 10 : 16, width, pad);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            while (*s)
                put(&o, *s++);
            break;
        }
        case 'c': put(&o, (char)va_arg(ap, int)); break;
        case '%': put(&o, '%'); break;
        case '\0': p--; break;
        default:
            put(&o, '%');
            put(&o, *p);
            break;
        }
    }
    if (size)
        buf[o.len < size ? o.len : size - 1] = '\0';
    return (int)o.len;
}

int fw_snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = fw_vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void fw_println(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    fw_vsnprintf(line, sizeof line - 1, fmt, ap); /* leave room for the '\n' */
    va_end(ap);
    size_t n = strlen(line);
    line[n++] = '\n';
    lock();
    for (size_t i = 0; i < n; i++)
        uart_putc(line[i]);
    unlock();
}

/* One `rep outsb` to THR: KVM hands the whole string to the host in one exit (a page at a time),
 * where a byte at a time costs two exits a byte. Only for the flood, whose point is volume: the
 * host's UART never holds back output, so THR needs no polling in between. */
static void uart_write_burst(const char *s, size_t n)
{
    __asm__ volatile("rep outsb" : "+S"(s), "+c"(n) : "d"((uint16_t)COM1_THR) : "memory");
}

void fw_console_flood(void)
{
    static const char filler[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    static char line[32 + 8192 + 1];
    lock(); /* for ever: nothing else gets the console */
    for (uint64_t n = 0;; n++) {
        fw_snprintf(line, 32, "flood %lu ", n);
        size_t len = strlen(line);
        /* Every 16th line is 8 KiB: longer than any line the host keeps whole. */
        const size_t body = n % 16 == 15 ? 8192 : 100;
        for (size_t i = 0; i < body; i++)
            line[len++] = filler[i % (sizeof filler - 1)];
        line[len++] = '\n';
        uart_write_burst(line, len);
    }
}
