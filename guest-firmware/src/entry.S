/*
 * Entry points of lparvisor-firmware.
 *
 *  lpv_entry64  e_entry of the ELF. lparvisor jumps here in 64-bit mode (normally at CPL3) with
 *               RDI = boot info, RSI = vCPU index, RSP = this vCPU's stack top. Only
 *               unprivileged instructions here.
 *  mb_entry32   Multiboot entry (QEMU -kernel). 32-bit protected mode, paging off, CPL0,
 *               EAX = 0x2BADB002, EBX = multiboot info. Builds identity page tables for the
 *               first 4 GiB (2 MiB pages), enters long mode, then calls fw_multiboot_main.
 *
 * The multiboot header sits at the very start of the one PT_LOAD segment (see firmware.ld),
 * so QEMU's a.out-kludge arithmetic (file offset of load_addr = header offset - (header_addr -
 * load_addr)) lands on the segment's p_offset.
 */
#include "layout.h"

    .section .multiboot, "a"
    .balign 4
    .globl mb_header
mb_header:
    .long FW_MB_MAGIC
    .long FW_MB_FLAGS
    .long -(FW_MB_MAGIC + FW_MB_FLAGS)
    .long mb_header          /* header_addr */
    .long __image_start      /* load_addr: first byte of the segment */
    .long __data_end         /* load_end_addr: end of the file-backed part */
    .long __bss_end          /* bss_end_addr: QEMU zeroes [load_end, bss_end) */
    .long mb_entry32         /* entry_addr */

/* ---------------- 64-bit entry (lparvisor, CPL3) ---------------- */
    .section .text.entry, "ax"
    .code64
    .globl lpv_entry64
    .type lpv_entry64, @function
lpv_entry64:
    cld
    xorl %ebp, %ebp
    andq $-16, %rsp
    /* rdi = boot info, rsi = vCPU index: already the C arguments */
    call fw_main
1:  pause
    jmp 1b
    .size lpv_entry64, . - lpv_entry64

/* ---------------- 32-bit Multiboot entry (QEMU, CPL0) ---------------- */
    .code32
    .globl mb_entry32
    .type mb_entry32, @function
mb_entry32:
    cli
    cld
    movl %eax, mb_boot_magic
    movl %ebx, mb_boot_info

    /* zero .bss (QEMU already does; be independent of the loader) */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3; PDn[i] = (n GiB + i * 2 MiB) | P|RW|US|PS.
     * The user bit is set as in lparvisor's tables (the cpl3=1 self-test runs at CPL3). */
    movl $mb_pdpt, %eax
    orl $0x7, %eax
    movl %eax, mb_pml4
    movl $mb_pd, %eax
    orl $0x7, %eax
    xorl %ecx, %ecx
1:  movl %eax, mb_pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    movl $0x87, %eax
    xorl %ecx, %ecx
2:  movl %eax, mb_pd(,%ecx,8)
    addl $0x200000, %eax
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $mb_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 /* CR4.PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx          /* EFER */
    rdmsr
    orl $0x100, %eax                /* EFER.LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           /* CR0.PG | CR0.PE */
    movl %eax, %cr0
    lgdt mb_gdt_desc
    ljmp $FW_SEL_KERNEL_CODE, $mb_entry64
    .size mb_entry32, . - mb_entry32

    .code64
mb_entry64:
    movl $FW_SEL_KERNEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movq $FW_STACK_TOP, %rsp
    xorl %ebp, %ebp
    movl mb_boot_magic(%rip), %edi
    movl mb_boot_info(%rip), %esi
    call fw_multiboot_main
3:  pause
    jmp 3b

/* ---------------- multiboot-only data ---------------- */
    .section .data
    .balign 8
mb_gdt:
    .quad 0                         /* null */
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code, DPL0 */
    .quad 0x00CF92000000FFFF        /* 0x10: data, DPL0 */
mb_gdt_end:
    .balign 8
mb_gdt_desc:
    .word mb_gdt_end - mb_gdt - 1
    .long mb_gdt
    .balign 4
mb_boot_magic:
    .long 0
mb_boot_info:
    .long 0

    .section .bss
    .balign 4096
mb_pml4:
    .skip 4096
mb_pdpt:
    .skip 4096
mb_pd:
    .skip 4 * 4096

    .section .note.GNU-stack, "", @progbits
