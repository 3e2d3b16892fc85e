/*
 * hog (test-only): breaks each limit the runtime enforces, one per message kind.
 *
 *   kind 1   loops forever                       -> out of fuel, or timeout without fuel
 *   kind 2   mallocs 1 MiB blocks until malloc fails (memory.grow refused), then traps
 *            (__builtin_trap: "unreachable")     -> out of memory at the memory_mb limit
 *   kind 3   recurses without end, each frame only in WebAssembly locals
 *                                                -> the engine's stack limit (stack_kb)
 *   kind 4   printf("hog: hello from printf\n") to stdout and
 *            fprintf(stderr, "hog: warning from stderr\n"), then returns 0
 *                                                -> one info and one warning log line
 *   kind 5   recurses with a 1 KiB array per frame: the C stack (64 KiB, below the data)
 *            overflows under address 0           -> a memory-access trap (fault)
 *   other    returns 0
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <stdlib.h>

/* Volatile, so the compiler can neither prove the loop endless nor remove the work. */
static volatile uint64_t spins;
static volatile int32_t depth_sink;
static volatile int32_t never = -1;
static void *volatile last_block;

static void spin_forever(void) {
    for (;;) spins++;
}

static void eat_memory(void) {
    size_t blocks = 0;
    for (;;) {
        unsigned char *p = malloc(1 << 20);
        if (p == NULL) break;
        /* Kept in a volatile, or the compiler could drop a malloc whose block is unused.
         * Not touched: growing the memory is what counts, and a memset would cost fuel. */
        last_block = p;
        blocks++;
    }
    qh_logf(QH_LOG_INFO, "hog: malloc failed after %zu MiB", blocks);
    __builtin_trap();
}

/* Called through a volatile function pointer: no tail call, no loop, no inlining. */
static int32_t dive(int32_t depth);
static int32_t (*volatile next_dive)(int32_t) = dive;

static int32_t dive(int32_t depth) {
    depth_sink = depth;
    if (depth == never) return 0;
    return next_dive(depth + 1) + 1;
}

static int32_t dive_with_array(int32_t depth);
static int32_t (*volatile next_dive_with_array)(int32_t) = dive_with_array;

static int32_t dive_with_array(int32_t depth) {
    volatile char frame[1024];
    frame[0] = (char)depth;
    if (depth == never) return frame[0];
    return next_dive_with_array(depth + 1) + frame[0];
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    (void)payload;
    (void)len;
    switch (kind) {
    case 1: spin_forever(); break;
    case 2: eat_memory(); break;
    case 3: return dive(0) == 0 ? 1 : 0;
    case 4:
        printf("hog: hello from printf\n");
        fflush(stdout);
        fprintf(stderr, "hog: warning from stderr\n");
        return 0;
    case 5: return dive_with_array(0) == 0 ? 1 : 0;
    default: break;
    }
    return 0;
}
