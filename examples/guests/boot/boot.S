/*
 * Multiboot (v1) entry shared by the project's bare-metal guests: vtd-guest (the VT-d
 * self-test kernel, selftest/) and the vtd-conformance scenario interpreter (interp/).
 * One entry for both, so a fix to the boot path reaches both guests.
 *
 * Entered in 32-bit protected mode, paging off (EAX = 0x2BADB002, EBX = multiboot info).
 * Builds an identity map of the low 4 GiB with 2 MiB pages (MMIO from 3 GiB up uncached),
 * switches to long mode and calls guest_main(magic, info), which each guest defines in C.
 *
 * Interrupts: 256 stubs, 16 bytes apart from isr_stubs, each push its vector and jump to
 * isr_common, which saves the caller-saved registers (and rbx, which it uses), calls
 * isr_dispatch(vector, frame) (each guest defines it; frame points at the error code if the
 * vector has one, else at RIP) and returns with iretq. idt.c installs the 256 gates.
 *
 * Built with plain GNU as (--64); the .code32 part is 32-bit code inside an ELF64 object, the
 * final image is converted to elf32-i386 for multiboot loaders.
 */
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003          /* page-align modules, want memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text32, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    movl $stack_top, %esp
    movl %eax, %edi                    /* multiboot magic, first C argument later */
    movl %ebx, %esi                    /* multiboot info, second C argument */

    /* PML4[0] -> PDPT (the loader zeroed bss, so every other entry is not present). */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4

    /* PDPT[0..3] -> PD[0..3] */
    movl $pd, %eax
    orl $3, %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* 2048 PD entries of 2 MiB: identity map of 4 GiB; >= 3 GiB with PCD | PWT. */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                    /* P | RW | PS */
    cmpl $1536, %ecx
    jb 3f
    orl $0x18, %eax
3:  movl %eax, pd(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                    /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx             /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                   /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax              /* PG | PE */
    movl %eax, %cr0
    lgdt gdt_desc
    ljmp $0x08, $long_entry

    .code64
long_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $stack_top, %rsp
    movl %edi, %edi                    /* zero-extend both arguments */
    movl %esi, %esi
    call guest_main
4:  cli
    hlt
    jmp 4b

    /* One 16-byte stub per vector. */
    .align 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .align 16
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    pushq %rbx                         /* used below to undo the stack alignment */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 80(%rsp), %rdi                /* vector */
    leaq 88(%rsp), %rsi                /* error code (if any), then RIP, CS, RFLAGS, ... */
    movq %rsp, %rbx                    /* rbx is callee-saved: restore rsp from it */
    andq $-16, %rsp
    cld
    call isr_dispatch
    movq %rbx, %rsp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    popq %rbx
    addq $8, %rsp                      /* the vector */
    iretq

    .section .rodata
    .align 8
gdt:
    .quad 0
    .quad 0x00af9a000000ffff           /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff           /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .align 4096
pml4:
    .skip 4096
pdpt:
    .skip 4096
pd:
    .skip 4 * 4096
stack:
    .skip 65536
stack_top:
