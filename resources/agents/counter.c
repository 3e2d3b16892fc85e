/*
 * counter: keeps a running total and reports it on request.
 *
 *   kind 1, payload i64 n   adds n to the total (wrapping at 64 bits)
 *   kind 2, any payload     replies kind 3 with the total as one i64 to the sender; when the
 *                           request comes from the runtime (a scenario message), logs it instead
 *   other kinds             ignored (logged at debug level)
 *
 * It also shows agent-defined snapshots: qh_snapshot/qh_restore save just the 16 bytes that
 * matter ("QHC1", a version, the total) instead of letting the runtime copy the whole linear
 * memory. The format carries a magic and a version, so a state saved by an older build can be
 * recognised (and refused) after the agent changes.
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "counter"
 *     module = "../agents/counter.wasm"
 *
 *     [[messages]]
 *     to = "counter"
 *     kind = 1
 *     payload_i64 = [5]
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_ADD = 1, KIND_GET = 2, KIND_VALUE = 3 };

static int64_t total;

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    switch (kind) {
    case KIND_ADD:
        if (len != 8) {
            /* A malformed request is an error: the group's on_error policy decides. */
            qh_logf(QH_LOG_ERROR, "counter: kind 1 needs one i64 (8 bytes), got %zu bytes", len);
            return 1;
        }
        /* Unsigned arithmetic: overflow wraps instead of being undefined behaviour. */
        total = (int64_t)((uint64_t)total + (uint64_t)qh_get_i64(payload));
        return 0;
    case KIND_GET:
        if (from == QH_FROM_RUNTIME) {
            qh_logf(QH_LOG_INFO, "counter: total = %lld", (long long)total);
            return 0;
        }
        return qh_send_i64(from, KIND_VALUE, total) == QH_OK ? 0 : 1;
    default:
        qh_logf(QH_LOG_DEBUG, "counter: ignoring kind %d from %d", (int)kind, (int)from);
        return 0;
    }
}

/* The snapshot format: magic "QHC1", u32 version 1, i64 total; little-endian. */
#define SNAPSHOT_MAGIC "QHC1"
#define SNAPSHOT_VERSION 1
#define SNAPSHOT_SIZE 16

int32_t qh_snapshot(void) {
    uint8_t state[SNAPSHOT_SIZE];
    memcpy(state, SNAPSHOT_MAGIC, 4);
    qh_put_i32(state + 4, SNAPSHOT_VERSION);
    qh_put_i64(state + 8, total);
    qh_snapshot_put(state, sizeof state);
    return 0;
}

int32_t qh_restore(const uint8_t *state, size_t len) {
    if (len != SNAPSHOT_SIZE || memcmp(state, SNAPSHOT_MAGIC, 4) != 0 ||
        qh_get_i32(state + 4) != SNAPSHOT_VERSION) {
        qh_logf(QH_LOG_ERROR, "counter: not a counter snapshot (%zu bytes)", len);
        return 1;
    }
    total = qh_get_i64(state + 8);
    return 0;
}
