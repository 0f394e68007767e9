/*
 * IDT setup shared by the bare-metal guests (see idt.h): one place that knows the gate
 * format and the stub spacing boot.S uses.
 */
#include "idt.h"

struct idt_gate {
    unsigned short offset_low;
    unsigned short selector;
    unsigned char ist;
    unsigned char type;
    unsigned short offset_mid;
    unsigned int offset_high;
    unsigned int reserved;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));

/* boot.S: 256 stubs, 16 bytes apart. */
extern char isr_stubs[];

void idt_install(void)
{
    for (int v = 0; v < 256; v++) {
        unsigned long handler = (unsigned long)isr_stubs + 16ul * (unsigned long)v;
        idt[v].offset_low = (unsigned short)handler;
        idt[v].selector = 0x08;
        idt[v].ist = 0;
        idt[v].type = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
        idt[v].offset_mid = (unsigned short)(handler >> 16);
        idt[v].offset_high = (unsigned int)(handler >> 32);
        idt[v].reserved = 0;
    }
    struct {
        unsigned short limit;
        unsigned long base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (unsigned long)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

int exception_has_error_code(unsigned long long vector)
{
    return vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 ||
           vector == 29 || vector == 30;
}
