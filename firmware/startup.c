/*
 * tinyrnn startup code for Cortex-M boards, with console and exit through semihosting.
 *
 * Reset_Handler, in order:
 *   1. paints the stack with a pattern, so tinyrnn_stack_peak() can tell how deep it went;
 *   2. on ARMv8-M, sets MSPLIM to the bottom of the stack, so an overflow faults;
 *   3. enables the FPU (and MVE) through CPACR when the build uses them;
 *   4. copies .data from flash and zeroes .bss;
 *   5. opens the semihosting stdio handles, runs the constructors, and exits with main()'s
 *      return value (QEMU exits with it as its own status).
 * Every fault or unexpected exception lands in Fault_Handler, which moves to a fresh stack,
 * prints "@fault NAME pc=0x........" on the semihosting console without using the C library,
 * and exits with status TINYRNN_FAULT_STATUS + exception number (see tinyrnn_board.h).
 *
 * The symbols below come from the linker script rendered from linker.ld.j2.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "tinyrnn_board.h"

extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_limit[], __stack_top[];
extern char __heap_start[], __heap_end[];

extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

void Reset_Handler(void);
void Fault_Handler(void);
void tinyrnn_fault(const uint32_t *frame, uint32_t exception);
void *_sbrk(ptrdiff_t increment);

#define STACK_PAINT 0xA5A5A5A5u
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

/* Semihosting operations (ARM "Semihosting for AArch32 and AArch64", v2). */
#define SYS_WRITE0 0x04u
#define SYS_EXIT 0x18u
#define SYS_EXIT_EXTENDED 0x20u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

typedef union {
    void (*handler)(void);
    const void *stack_top;
} vector_t;

/* Core exceptions only: nothing here enables a peripheral interrupt. */
__attribute__((section(".vectors"), used))
const vector_t tinyrnn_vectors[16] = {
    {.stack_top = __stack_top},
    {.handler = Reset_Handler},
    {.handler = Fault_Handler},  /* 2 NMI */
    {.handler = Fault_Handler},  /* 3 HardFault */
    {.handler = Fault_Handler},  /* 4 MemManage */
    {.handler = Fault_Handler},  /* 5 BusFault */
    {.handler = Fault_Handler},  /* 6 UsageFault */
    {.handler = Fault_Handler},  /* 7 SecureFault (ARMv8-M) */
    {.handler = 0},
    {.handler = 0},
    {.handler = 0},
    {.handler = Fault_Handler},  /* 11 SVCall */
    {.handler = Fault_Handler},  /* 12 DebugMonitor */
    {.handler = 0},
    {.handler = Fault_Handler},  /* 14 PendSV */
    {.handler = Fault_Handler},  /* 15 SysTick */
};

void Reset_Handler(void)
{
    uint32_t *sp;
    uint32_t *p;

    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = __stack_limit; p < sp - 16; ++p) {
        *p = STACK_PAINT;
    }
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8M_BASE__) || \
    defined(__ARM_ARCH_8_1M_MAIN__)
    __asm__ volatile("msr msplim, %0" : : "r"(__stack_limit));
#endif
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    SCB_CPACR |= 0xFu << 20; /* CP10 and CP11: full access */
    __asm__ volatile("dsb\n\tisb" : : : "memory");
#endif
    for (p = __data_start; p < __data_end; ++p) {
        *p = __data_load[p - __data_start];
    }
    for (p = __bss_start; p < __bss_end; ++p) {
        *p = 0;
    }
    initialise_monitor_handles();
    __libc_init_array();
    exit(main());
}

size_t tinyrnn_stack_peak(void)
{
    const uint32_t *p = __stack_limit;

    while (p < __stack_top && *p == STACK_PAINT) {
        ++p;
    }
    return (size_t)((const char *)__stack_top - (const char *)p);
}

size_t tinyrnn_stack_size(void)
{
    return (size_t)((const char *)__stack_top - (const char *)__stack_limit);
}

/* newlib's malloc grows the heap through this; the heap ends where the stack begins. */
void *_sbrk(ptrdiff_t increment)
{
    static char *brk = __heap_start;
    char *previous = brk;

    if (increment > __heap_end - brk || increment < __heap_start - brk) {
        errno = ENOMEM;
        return (void *)-1;
    }
    brk += increment;
    return previous;
}

/* Takes the frame the core pushed (r0) and the exception number (r1), then continues in C on
   a fresh stack: the fault may have been a stack overflow. Thumb-1 only, for ARMv6-M. */
__attribute__((naked)) void Fault_Handler(void)
{
    __asm__ volatile(
        "mrs r0, msp\n\t"
        "mrs r1, ipsr\n\t"
        "ldr r2, =__stack_top\n\t"
        "mov sp, r2\n\t"
        "ldr r3, =tinyrnn_fault\n\t"
        "bx r3\n\t"
        ".ltorg\n");
}

static uint32_t semihost(uint32_t operation, const void *argument)
{
    register uint32_t r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;

    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static char *put_hex(char *out, uint32_t value)
{
    int shift;

    for (shift = 28; shift >= 0; shift -= 4) {
        *out++ = "0123456789abcdef"[(value >> shift) & 0xFu];
    }
    return out;
}

void tinyrnn_fault(const uint32_t *frame, uint32_t exception)
{
    static const char *const names[] = {"unexpected", "unexpected", "nmi", "hardfault",
                                        "memmanage", "busfault", "usagefault", "securefault"};
    const char *name = names[exception < 8u ? exception : 0u];
    uint32_t status = TINYRNN_FAULT_STATUS + (exception < 8u ? exception : 1u);
    uint32_t block[2];
    char line[64];
    char *out = line;
    const char *s;

    for (s = "@fault "; *s != '\0'; ++s) {
        *out++ = *s;
    }
    for (s = name; *s != '\0'; ++s) {
        *out++ = *s;
    }
    for (s = " pc=0x"; *s != '\0'; ++s) {
        *out++ = *s;
    }
    /* The stacked PC is the sixth word of the frame, if the frame lies inside the stack. */
    if (frame >= __stack_limit && frame + 8 <= __stack_top) {
        out = put_hex(out, frame[6]);
    } else {
        out = put_hex(out, 0xFFFFFFFFu);
    }
    *out++ = '\n';
    *out = '\0';
    semihost(SYS_WRITE0, line);

    block[0] = ADP_STOPPED_APPLICATION_EXIT;
    block[1] = status;
    semihost(SYS_EXIT_EXTENDED, block);
    semihost(SYS_EXIT, (const void *)ADP_STOPPED_APPLICATION_EXIT);
    for (;;) {
    }
}
