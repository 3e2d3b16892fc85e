/*
 * worker: does the planner's work items (see planner.c).
 *
 *   kind 2, payload i64 index   computes the number of Collatz steps that take index + 1 to 1
 *                               and replies kind 3 with two i64 (index, steps) to the sender;
 *                               an item from the runtime (a scenario message) is logged instead
 *
 * The Collatz steps are cheap but not trivial (0 for 1, 111 for 27, 350 for 77031), and any
 * result is easy to check by hand, which makes the fan-out/gather of the planner testable.
 *
 * Scenario use: a group named "worker" with count = K gives instances worker-0 .. worker-(K-1),
 * which is what the planner looks up by default.
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_ITEM = 2, KIND_RESULT = 3 };

/* Steps of n -> n/2 (even) or 3n+1 (odd) until 1; -1 if a value would overflow 64 bits
 * (no start value below 2^60 is known to do so, but the agent must not trust its input). */
static int64_t collatz_steps(uint64_t n) {
    int64_t steps = 0;
    while (n > 1) {
        if (n % 2 == 0) {
            n /= 2;
        } else {
            if (n > (UINT64_MAX - 1) / 3) return -1;
            n = 3 * n + 1;
        }
        steps++;
    }
    return steps;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    if (kind != KIND_ITEM) {
        qh_logf(QH_LOG_DEBUG, "worker: ignoring kind %d from %d", (int)kind, (int)from);
        return 0;
    }
    if (len != 8) {
        qh_logf(QH_LOG_ERROR, "worker: a work item is one i64 (8 bytes), got %zu bytes", len);
        return 1;
    }
    int64_t index = qh_get_i64(payload);
    if (index < 0) {
        qh_logf(QH_LOG_ERROR, "worker: negative item index %lld", (long long)index);
        return 1;
    }
    int64_t steps = collatz_steps((uint64_t)index + 1);
    if (from == QH_FROM_RUNTIME) {
        qh_logf(QH_LOG_INFO, "worker: item %lld -> %lld", (long long)index, (long long)steps);
        return 0;
    }
    uint8_t reply[16];
    qh_put_i64(reply, index);
    qh_put_i64(reply + 8, steps);
    return qh_send(from, KIND_RESULT, reply, sizeof reply) == QH_OK ? 0 : 1;
}
