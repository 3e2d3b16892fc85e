/*
 * crew: a tour worker in C (ABI v2): answers each job (kind 10, JSON {"n": i}) with a reply
 * (kind 11, JSON {"n": i, "steps": s}), s being the Collatz steps of i + 1. The reply goes to
 * the job's reply-to with its correlation id, so the manager matches it without any ids in
 * the payload.
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_JOB = 10, KIND_RESULT = 11 };

static int64_t collatz_steps(uint64_t n) {
    int64_t steps = 0;
    while (n > 1) {
        n = (n % 2 == 0) ? n / 2 : 3 * n + 1;
        steps++;
    }
    return steps;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    if (kind != KIND_JOB) return 0;
    int64_t n;
    if (qh_json_get_int((const char *)payload, len, "n", &n) != 0 || n < 0) {
        qh_set_error_str("crew: a job is {\"n\": a non-negative integer}");
        return 1;
    }
    char out[64];
    snprintf(out, sizeof out, "{\"n\":%lld,\"steps\":%lld}", (long long)n,
             (long long)collatz_steps((uint64_t)n + 1));
    return qh_reply_str(KIND_RESULT, out) == QH_OK ? 0 : 1;
}
