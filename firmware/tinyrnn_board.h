/* What startup.c offers the harness. */
#ifndef TINYRNN_BOARD_H
#define TINYRNN_BOARD_H

#include <stddef.h>

/* A fault exits with this plus the exception number: 242 NMI, 243 HardFault, 244 MemManage,
   245 BusFault, 246 UsageFault, 247 SecureFault; 241 for any other exception. */
#define TINYRNN_FAULT_STATUS 240

/* Bytes of the main stack that were written since reset (its high-water mark). */
size_t tinyrnn_stack_peak(void);

/* Bytes reserved for the main stack. */
size_t tinyrnn_stack_size(void);

#endif
