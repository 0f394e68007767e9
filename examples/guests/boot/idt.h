/*
 * The interrupt descriptor table of the bare-metal guests (boot.S's 256 stubs).
 *
 * Declared here so both guests set the IDT up the same way; each guest defines
 * isr_dispatch(vector, frame) itself (what an interrupt or exception means differs: the
 * self-test counts interrupts, the interpreter reports any exception and exits).
 */
#ifndef VTD_GUEST_IDT_H
#define VTD_GUEST_IDT_H

/* Loads an IDT whose 256 64-bit interrupt gates (DPL 0, selector 0x08) point at boot.S's
 * stubs. */
void idt_install(void);

/* Whether the CPU pushes an error code for exception `vector` (Intel SDM vol. 3, 6.13): then
 * isr_dispatch's frame[0] is the error code and frame[1] RIP, else frame[0] is RIP. */
int exception_has_error_code(unsigned long long vector);

/* Defined by each guest; called by boot.S's isr_common. */
void isr_dispatch(unsigned long long vector, unsigned long long *frame);

/* Defined by each guest; called by boot.S in long mode with the multiboot magic and the
 * physical address of the multiboot information. */
void guest_main(unsigned int magic, unsigned int info);

#endif
