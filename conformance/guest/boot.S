/*
 * Multiboot (v1) entry of the vtd-conformance scenario interpreter.
 *
 * Entered in 32-bit protected mode (EAX = 0x2BADB002, EBX = multiboot info).
 * Builds identity paging for the low 4 GiB with 2 MiB pages (0xc0000000 and
 * up uncached for MMIO), switches to long mode and calls interp_main(magic,
 * mbi) in C. Exceptions 0-31 go to interp_exception(frame).
 */
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003          /* page-align modules, memory info */

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
    movl $boot_stack_top, %esp
    movl %eax, %edi                    /* multiboot magic */
    movl %ebx, %esi                    /* multiboot info */

    /* PML4[0] -> PDPT */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $0, pml4 + 4

    /* PDPT[0..3] -> PD[0..3] */
    movl $pd, %eax
    orl $3, %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(,%ecx,8)
    movl $0, pdpt + 4(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* PD entries: 2048 x 2 MiB = 4 GiB identity */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                    /* P | RW | PS */
    cmpl $1536, %ecx                   /* >= 3 GiB: PWT | PCD */
    jb 3f
    orl $0x18, %eax
3:  movl %eax, pd(,%ecx,8)
    movl $0, pd + 4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                    /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx             /* EFER */
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
    movq $boot_stack_top, %rsp
    movl %edi, %edi
    movl %esi, %esi
    call interp_main
4:  hlt
    jmp 4b

    /* Exception stubs: push (error code, vector), then the common path. */
    .macro ISR_NOERR n
isr\n:
    pushq $0
    pushq $\n
    jmp isr_common
    .endm
    .macro ISR_ERR n
isr\n:
    pushq $\n
    jmp isr_common
    .endm

    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    ISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \n
    .endr

isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call interp_exception
5:  hlt
    jmp 5b

    .section .rodata
    .align 8
    .globl isr_table
isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad isr\n
    .endr

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
boot_stack:
    .skip 65536
boot_stack_top:
