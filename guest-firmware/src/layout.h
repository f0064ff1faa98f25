/*
 * Constants shared by the assembly entry code and the C code. The assembler cannot include
 * lparvisor/abi.h (it declares C structs), so the values it needs are repeated here and
 * checked against abi.h with static assertions in main.c.
 */
#ifndef FW_LAYOUT_H
#define FW_LAYOUT_H

#define FW_STACK_TOP 0x200000 /* == LPV_STACK_TOP */
#define FW_SEL_KERNEL_CODE 0x08 /* == LPV_SEL_KERNEL_CODE: 64-bit code in the multiboot GDT */
#define FW_SEL_KERNEL_DATA 0x10 /* == LPV_SEL_KERNEL_DATA */

#define FW_MB_MAGIC 0x1BADB002 /* Multiboot (v1) header magic */
#define FW_MB_BOOT_MAGIC 0x2BADB002 /* EAX at the Multiboot entry */
/* Flags: bit 1 = want mem_lower/mem_upper, bit 16 = the header carries the load addresses
 * ("a.out kludge"), which is what lets QEMU load this 64-bit ELF at all. */
#define FW_MB_FLAGS 0x00010002

#endif
