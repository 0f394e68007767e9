/*
 * vtd-conformance scenario interpreter (64-bit part).
 *
 * Reads the encoded scenario from the first multiboot module, runs its steps
 * against the VT-d unit at 0xfed90000, guest RAM and the edu device at
 * 00:01.0, and prints the transcript on the 16550 at 0x3f8. Ends by writing
 * the exit code to the isa-debug-exit port 0xf4 (0 = ran to the end).
 *
 * Module format (little endian; kept in sync with conformance/src/encode.rs):
 *   header: u32 magic "VTDC" (0x43445456), u32 version (1), u32 steps, u32 bytes
 *   step:   u32 op, u32 index, then op-specific u64 fields:
 *     1 write64     gpa, count, count x value
 *     2 fill        gpa, len, byte
 *     3 mmio_write  off, size, value
 *     4 mmio_read   off, size, mask
 *     5 poll        off, size, mask, value, max
 *     6 dma         dir (0 to_device, 1 from_device), iova, len, dev_off
 *     7 dump        gpa, len
 *
 * Built freestanding with -mno-sse -mgeneral-regs-only: no libc, no FPU.
 */

#include "idt.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define MODULE_MAGIC 0x43445456u
#define MODULE_VERSION 1u

#define VTD_BASE 0xfed90000ul
#define VTD_SIZE 0x1000ul
#define EDU_BAR0 0xfea00000ul
#define EDU_BUF 0x40000ul
#define EDU_BUF_SIZE 4096ul
#define SCEN_RAM_START 0x1000000ul

#define EXIT_OK 0
#define EXIT_BAD_MODULE 2
#define EXIT_EXCEPTION 3
#define EXIT_DEVICE 4

enum {
    OP_WRITE64 = 1,
    OP_FILL = 2,
    OP_MMIO_WRITE = 3,
    OP_MMIO_READ = 4,
    OP_POLL = 5,
    OP_DMA = 6,
    OP_DUMP = 7,
};

/* ---- port and memory access ---- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* One access of exactly the given size (never split, never merged). */
static inline u32 rd32(u64 addr)
{
    u32 v;
    __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
static inline u64 rd64(u64 addr)
{
    u64 v;
    __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
static inline void wr32(u64 addr, u32 v) { __asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(addr) : "memory"); }
static inline void wr64(u64 addr, u64 v) { __asm__ volatile("movq %0, (%1)" : : "r"(v), "r"(addr) : "memory"); }

/* The compiler may emit calls to these. */
void *memset(void *d, int c, u64 n)
{
    volatile u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, u64 n)
{
    volatile u8 *p = d;
    const volatile u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

/* ---- serial output ---- */

static void putc_serial(char c)
{
    while (!(inb(0x3fd) & 0x20))
        ;
    outb(0x3f8, (u8)c);
}
static void puts_serial(const char *s)
{
    while (*s)
        putc_serial(*s++);
}
static void put_hex(u64 v)
{
    char buf[17];
    int i = 16;
    buf[16] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    puts_serial(&buf[i]);
}
static void put_dec(u64 v)
{
    char buf[21];
    int i = 20;
    buf[20] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_serial(&buf[i]);
}

static void __attribute__((noreturn)) exit_with(u32 code)
{
    outl(0xf4, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void __attribute__((noreturn)) fail(u64 step, const char *what)
{
    puts_serial("error: step ");
    put_dec(step);
    puts_serial(": ");
    puts_serial(what);
    putc_serial('\n');
    exit_with(EXIT_BAD_MODULE);
}

static void __attribute__((noreturn)) fail0(const char *what, u32 code)
{
    puts_serial("error: ");
    puts_serial(what);
    putc_serial('\n');
    exit_with(code);
}

/* ---- exceptions ---- */

/* Any exception or interrupt ends the scenario: interrupts stay disabled, so a vector here
 * is an exception (or a bug). The line is part of the transcript on both machines. */
void isr_dispatch(unsigned long long vector, unsigned long long *frame)
{
    u64 cr2;
    int has_error = exception_has_error_code(vector);
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    puts_serial("error: exception ");
    put_dec(vector);
    puts_serial(" err 0x");
    put_hex(has_error ? frame[0] : 0);
    puts_serial(" rip 0x");
    put_hex(frame[has_error ? 1 : 0]);
    puts_serial(" cr2 0x");
    put_hex(cr2);
    putc_serial('\n');
    exit_with(EXIT_EXCEPTION);
}

/* ---- PCI and edu ---- */

#define EDU_CFG 0x80000800u /* bus 0, device 1, function 0 */

static u32 pci_read(u32 reg)
{
    outl(0xcf8, EDU_CFG | (reg & 0xfc));
    return inl(0xcfc);
}
static void pci_write(u32 reg, u32 v)
{
    outl(0xcf8, EDU_CFG | (reg & 0xfc));
    outl(0xcfc, v);
}

static void edu_setup(void)
{
    if (pci_read(0x00) != 0x11e81234u)
        fail0("edu device (1234:11e8) not found at 00:01.0", EXIT_DEVICE);
    pci_write(0x04, pci_read(0x04) & ~0x7u); /* decode off while moving BAR0 */
    pci_write(0x10, (u32)EDU_BAR0);
    pci_write(0x04, (pci_read(0x04) & 0xffffu) | 0x6u); /* memory space, bus master */
    if ((rd32(EDU_BAR0 + 0x00) & 0xffu) != 0xedu)
        fail0("edu BAR0 does not answer at 0xfea00000", EXIT_DEVICE);
}

static void edu_dma(u64 step, u64 dir, u64 iova, u64 len, u64 dev_off)
{
    u64 n;
    if (dir == 0) {
        wr64(EDU_BAR0 + 0x80, iova);
        wr64(EDU_BAR0 + 0x88, EDU_BUF + dev_off);
    } else {
        wr64(EDU_BAR0 + 0x80, EDU_BUF + dev_off);
        wr64(EDU_BAR0 + 0x88, iova);
    }
    wr64(EDU_BAR0 + 0x90, len);
    wr32(EDU_BAR0 + 0x98, dir ? 3u : 1u);
    for (n = 0; n < 400000000ul; n++) {
        if (!(rd32(EDU_BAR0 + 0x98) & 1u))
            return;
    }
    fail(step, "edu DMA did not complete");
}

/* ---- scenario ---- */

static u64 ram_end = ~0ul;

struct cursor {
    const u8 *p;
    const u8 *end;
    u64 step;
};

static u32 take32(struct cursor *c)
{
    u32 v;
    if ((u64)(c->end - c->p) < 4)
        fail(c->step, "truncated module");
    v = (u32)c->p[0] | (u32)c->p[1] << 8 | (u32)c->p[2] << 16 | (u32)c->p[3] << 24;
    c->p += 4;
    return v;
}
static u64 take64(struct cursor *c)
{
    u64 lo = take32(c);
    u64 hi = take32(c);
    return lo | hi << 32;
}

static void check_ram(u64 step, u64 gpa, u64 len)
{
    if (gpa < SCEN_RAM_START || len > ram_end || gpa > ram_end - len)
        fail(step, "guest-physical range outside scenario RAM");
}

static void check_mmio(u64 step, u64 off, u64 size)
{
    if ((size != 4 && size != 8) || off >= VTD_SIZE || off + size > VTD_SIZE || (off & (size - 1)))
        fail(step, "bad register offset or size");
}

static u64 mmio_rd(u64 off, u64 size)
{
    return size == 4 ? rd32(VTD_BASE + off) : rd64(VTD_BASE + off);
}

static void line_start(u64 idx, const char *op)
{
    put_dec(idx);
    putc_serial(' ');
    puts_serial(op);
    putc_serial(' ');
}

static void run(const u8 *mod, const u8 *mod_end)
{
    struct cursor c = {mod, mod_end, 0};
    u32 magic, version, nsteps, bytes;

    magic = take32(&c);
    version = take32(&c);
    nsteps = take32(&c);
    bytes = take32(&c);
    if (magic != MODULE_MAGIC || version != MODULE_VERSION)
        fail0("module is not a version-1 vtd-conformance scenario", EXIT_BAD_MODULE);
    if (bytes > (u64)(mod_end - mod))
        fail0("module shorter than its header says", EXIT_BAD_MODULE);
    c.end = mod + bytes;

    puts_serial("vtdc-begin\n");
    for (u32 s = 0; s < nsteps; s++) {
        u32 op = take32(&c);
        u64 idx = take32(&c);
        c.step = idx;
        switch (op) {
        case OP_WRITE64: {
            u64 gpa = take64(&c), count = take64(&c);
            if (count > (1ul << 20))
                fail(idx, "write64 too long");
            check_ram(idx, gpa, count * 8);
            for (u64 i = 0; i < count; i++)
                wr64(gpa + i * 8, take64(&c));
            break;
        }
        case OP_FILL: {
            u64 gpa = take64(&c), len = take64(&c), byte = take64(&c);
            check_ram(idx, gpa, len);
            for (u64 i = 0; i < len; i++)
                *(volatile u8 *)(gpa + i) = (u8)byte;
            break;
        }
        case OP_MMIO_WRITE: {
            u64 off = take64(&c), size = take64(&c), value = take64(&c);
            check_mmio(idx, off, size);
            if (size == 4)
                wr32(VTD_BASE + off, (u32)value);
            else
                wr64(VTD_BASE + off, value);
            break;
        }
        case OP_MMIO_READ: {
            u64 off = take64(&c), size = take64(&c), mask = take64(&c);
            check_mmio(idx, off, size);
            u64 v = mmio_rd(off, size) & mask;
            line_start(idx, "mmio_read");
            puts_serial("0x");
            put_hex(v);
            putc_serial('\n');
            break;
        }
        case OP_POLL: {
            u64 off = take64(&c), size = take64(&c), mask = take64(&c);
            u64 value = take64(&c), max = take64(&c);
            int ok = 0;
            check_mmio(idx, off, size);
            for (u64 i = 0; i < max; i++) {
                if ((mmio_rd(off, size) & mask) == value) {
                    ok = 1;
                    break;
                }
            }
            line_start(idx, "poll");
            puts_serial(ok ? "ok\n" : "timeout\n");
            break;
        }
        case OP_DMA: {
            u64 dir = take64(&c), iova = take64(&c), len = take64(&c), dev_off = take64(&c);
            if (dir > 1 || len == 0 || len > EDU_BUF_SIZE || dev_off > EDU_BUF_SIZE - len)
                fail(idx, "bad dma parameters");
            edu_dma(idx, dir, iova, len, dev_off);
            break;
        }
        case OP_DUMP: {
            u64 gpa = take64(&c), len = take64(&c);
            if (len > 4096)
                fail(idx, "dump too long");
            check_ram(idx, gpa, len);
            line_start(idx, "dump");
            for (u64 i = 0; i < len; i++) {
                u8 b = *(volatile u8 *)(gpa + i);
                putc_serial("0123456789abcdef"[b >> 4]);
                putc_serial("0123456789abcdef"[b & 0xf]);
            }
            putc_serial('\n');
            break;
        }
        default:
            fail(idx, "unknown op code");
        }
    }
    puts_serial("end\n");
}

struct mb_info {
    u32 flags;
    u32 mem_lower;
    u32 mem_upper;
    u32 boot_device;
    u32 cmdline;
    u32 mods_count;
    u32 mods_addr;
};

struct mb_module {
    u32 start;
    u32 end;
    u32 string;
    u32 reserved;
};

void guest_main(u32 magic, u32 mbi_addr)
{
    const struct mb_info *mbi = (const struct mb_info *)(u64)mbi_addr;
    const struct mb_module *mod;

    idt_install();
    putc_serial('\n');
    if (magic != 0x2BADB002u)
        fail0("not started by a multiboot loader", EXIT_BAD_MODULE);
    if (mbi->flags & 1u)
        ram_end = 0x100000ul + (u64)mbi->mem_upper * 1024ul;
    if (!(mbi->flags & 8u) || mbi->mods_count < 1)
        fail0("no multiboot module (the encoded scenario)", EXIT_BAD_MODULE);
    mod = (const struct mb_module *)(u64)mbi->mods_addr;
    if (mod->end < mod->start || mod->end > SCEN_RAM_START)
        fail0("module must lie below 16 MiB", EXIT_BAD_MODULE);
    edu_setup();
    run((const u8 *)(u64)mod->start, (const u8 *)(u64)mod->end);
    exit_with(EXIT_OK);
}
