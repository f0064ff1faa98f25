/* Internal declarations of lparvisor-firmware (freestanding, integer-only). */
#ifndef FW_FW_H
#define FW_FW_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lparvisor/abi.h"

/* ---- port I/O and other unprivileged instructions (all fine at CPL3 given the TSS bitmap) ---- */
static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

static inline void barrier(void)
{
    __asm__ volatile("" ::: "memory");
}

/* ---- console.c ---- */
/* Formats one line (printf subset: %s %c %d %u %x with l/ll and a zero-padded width) and writes
 * it to COM1 atomically with respect to the other vCPUs. A '\n' is appended. */
void fw_println(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int fw_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int fw_snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- main.c ---- */
void fw_main(const struct lpv_boot_info *bi, uint64_t cpu) __attribute__((noreturn));
/* Stops the LPAR / QEMU through the debug-exit port (never returns). */
void fw_exit(uint8_t code) __attribute__((noreturn));

/* ---- multiboot.c ---- */
void fw_multiboot_main(uint32_t magic, uint32_t mbi) __attribute__((noreturn));

/* ---- libc.c (gcc may emit calls to these) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif
