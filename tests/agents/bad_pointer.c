/*
 * bad_pointer (test-only): passes the host pointers it must refuse, one case per kind.
 * Each case should trap the agent (the message fails with "fault: ..."); if the host call
 * returns instead, the agent logs "survived <case>: <result>" at error level and returns 1.
 *
 *   kind 1   log: text that runs past the end of memory
 *   kind 2   send: payload that runs past the end of memory
 *   kind 3   tensor_read: destination past the end of memory (tensor named by the payload,
 *            default "x"; logs "no tensor" and returns 1 if it does not exist)
 *   kind 4   tensor_info: out_ptr past the end of memory (same tensor)
 *   kind 5   lookup: name at an address that wraps around 2^32 (ptr + len overflows)
 *   kind 6   log: a negative length (-1 as i32, that is 0xFFFFFFFF)
 *   kind 7   send: a 17 MiB payload (more than the 16 MiB limit; in range)
 *   kind 8   tensor_read with handle 12345, which was never opened
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <stdlib.h>

/* The first byte after the agent's linear memory, and an address 16 bytes before it. */
static uintptr_t memory_end(void) { return (uintptr_t)__builtin_wasm_memory_size(0) * 65536u; }
static void *near_end(void) { return (void *)(memory_end() - 16); }

static int32_t open_named(const uint8_t *payload, size_t len) {
    char name[128] = "x";
    if (len > 0 && len < sizeof name) {
        memcpy(name, payload, len);
        name[len] = '\0';
    }
    int32_t h = qh_tensor_open_str(name);
    if (h < 0) qh_logf(QH_LOG_ERROR, "no tensor %s", name);
    return h;
}

static int32_t survived(const char *what, int32_t result) {
    qh_logf(QH_LOG_ERROR, "survived %s: %d", what, (int)result);
    return 1;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    int32_t h;
    switch (kind) {
    case 1:
        qh_log(QH_LOG_INFO, near_end(), 64);
        return survived("log past the end", 0);
    case 2: return survived("send past the end", qh_send(qh_self_id(), 1, near_end(), 64));
    case 3:
        if ((h = open_named(payload, len)) < 0) return 1;
        return survived("tensor_read past the end", qh_tensor_read(h, 0, near_end(), 64));
    case 4:
        if ((h = open_named(payload, len)) < 0) return 1;
        return survived("tensor_info past the end",
                        qh_tensor_info(h, (qh_tensor_info_t *)near_end()));
    case 5:
        return survived("lookup wrapping around",
                        qh_lookup((const char *)(uintptr_t)0xFFFFFFF0u, 0x20));
    case 6:
        qh_log(QH_LOG_INFO, "x", (size_t)-1);
        return survived("log with length -1", 0);
    case 7: {
        size_t big = 17u << 20;
        void *p = malloc(big);
        if (p == NULL) {
            qh_log_str(QH_LOG_ERROR, "bad_pointer: no memory for 17 MiB");
            return 1;
        }
        int32_t rc = qh_send(qh_self_id(), 1, p, big);
        free(p);
        return survived("send of 17 MiB", rc);
    }
    case 8: {
        uint8_t buf[4];
        return survived("tensor_read with handle 12345", qh_tensor_read(12345, 0, buf, 4));
    }
    default: return 0;
    }
}
