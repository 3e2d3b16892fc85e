/*
 * iterate: an iterative tensor computation with the tensors v2 calls (ABI version 2).
 *
 * It keeps one float32 tensor "acc" [4, 4] and, each round, updates it in place with three
 * chained GPU jobs submitted by one message:
 *
 *     tmp = scale(acc, 0.5)            gpu_submit       (a new tensor, "tmp")
 *     act = relu(tmp)                  gpu_submit       (reads tmp: chained behind job 1)
 *                                      or gpu_submit_into act, from the second round on
 *     acc = add(acc, act)              gpu_submit_into  (in place; reads act: chained)
 *
 * so a positive entry grows by half each round and a negative one stays. The three jobs run
 * at the next tick, one after the other in queue order. When their three GPU_DONE messages
 * have come, it logs the sum of acc, releases "tmp" (its memory is freed and the name is free
 * again from the next tick) and sets a timer for the next round, which makes "tmp" again
 * under the same name. After config "rounds" rounds (default 3) it releases "act" and "acc"
 * too, logs "done: sum S", and, when config "report_to" names an agent, sends it kind 5 with
 * the sum as text. Tensor names are global: with several instances, give each its own config
 * "prefix" (prepended to every name it makes, default "").
 *
 *   kind 1 (any payload)  start: create and fill acc (1, -2, 3, -4, ..., -16); also show what
 *                         the calls refuse (logged as "refused: ...")
 *   kind 2                a round (from the start message's timer, then from the previous
 *                         round's)
 *   GPU_DONE              count the round's jobs; a failed one fails the agent's message
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "iterate"
 *     module = "../agents/iterate.wasm"
 *     count = 2
 *     config = { rounds = 3 }
 *     overrides = { iterate-0 = { prefix = "a." }, iterate-1 = { prefix = "b." } }
 *     [[messages]]
 *     to = "iterate"
 *     kind = 1
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <stdio.h>

enum { KIND_START = 1, KIND_ROUND = 2, KIND_REPORT = 5 };
enum { N = 16 };

static int32_t rounds = 3;
static int32_t round_no;
static int32_t jobs_left;
static int32_t acc = -1, act = -1;
static char report_to[64];
static char prefix[64];

/* A name of this agent's: the config prefix and `base`. */
static const char *named(const char *base) {
    static char out[160];
    snprintf(out, sizeof out, "%s%s", prefix, base);
    return out;
}

int32_t qh_init(const char *config, size_t len) {
    int64_t n;
    if (qh_json_get_int(config, len, "rounds", &n) == 0) {
        if (n < 1 || n > 1000) {
            qh_log_str(QH_LOG_ERROR, "iterate: config rounds must be 1 to 1000");
            return 1;
        }
        rounds = (int32_t)n;
    }
    long got = qh_json_get_str(config, len, "report_to", report_to, sizeof report_to);
    if (got != QH_JSON_MISSING && got <= 0) {
        qh_log_str(QH_LOG_ERROR, "iterate: config report_to must be an agent's name");
        return 1;
    }
    got = qh_json_get_str(config, len, "prefix", prefix, sizeof prefix);
    if (got != QH_JSON_MISSING && got < 0) {
        qh_log_str(QH_LOG_ERROR, "iterate: config prefix must be a string of at most 63 bytes");
        return 1;
    }
    return 0;
}

static double sum_of(int32_t h) {
    float values[N];
    if (qh_tensor_read(h, 0, values, sizeof values) != (int32_t)sizeof values) return 0.0;
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += values[i];
    return sum;
}

static int start(void) {
    const int32_t shape[2] = {4, 4};
    acc = qh_tensor_create_str(named("acc"), QH_DTYPE_F32, 2, shape);
    if (acc < 0) {
        qh_logf(QH_LOG_ERROR, "iterate: tensor_create acc: %s", qh_strerror(acc));
        return 1;
    }
    float values[N];
    for (int i = 0; i < N; i++) values[i] = (float)((i % 2 ? -1 : 1) * (i + 1));
    if (qh_tensor_write(acc, 0, values, sizeof values) != 0) return 1;
    /* What the calls refuse: releasing a tensor made by this very message, and a job into a
     * tensor of another shape. */
    qh_logf(QH_LOG_INFO, "refused: release acc now: %d", (int)qh_tensor_release(acc));
    const int32_t wide[1] = {32};
    int32_t other = qh_tensor_create_str(named("wide"), QH_DTYPE_F32, 1, wide);
    qh_logf(QH_LOG_INFO, "refused: relu(acc) into wide: %d",
            (int)qh_gpu_submit_into_str("relu", &acc, 1, other, 0.0f));
    return qh_timer_after(1, KIND_ROUND, "", 0) < 0;
}

static int round_jobs(void) {
    int32_t j1 = qh_gpu_submit_str("scale", &acc, 1, named("tmp"), 0.5f);
    int32_t tmp = qh_tensor_open_str(named("tmp")); /* the output's handle, usable at once */
    int32_t j2;
    if (act < 0) {
        j2 = qh_gpu_submit_str("relu", &tmp, 1, named("act"), 0.0f);
        act = qh_tensor_open_str(named("act"));
    } else {
        j2 = qh_gpu_submit_into_str("relu", &tmp, 1, act, 0.0f);
    }
    const int32_t both[2] = {acc, act};
    int32_t j3 = qh_gpu_submit_into_str("add", both, 2, acc, 0.0f);
    if (j1 < 0 || tmp < 0 || j2 < 0 || act < 0 || j3 < 0) {
        qh_logf(QH_LOG_ERROR, "iterate: round %d: submit failed: %d %d %d", (int)round_no,
                (int)j1, (int)j2, (int)j3);
        return 1;
    }
    jobs_left = 3;
    return 0;
}

static int round_done(void) {
    double sum = sum_of(acc);
    qh_logf(QH_LOG_INFO, "round %d: sum %.3f", (int)round_no, sum);
    int32_t rc = qh_tensor_release(qh_tensor_open_str(named("tmp")));
    if (rc != 0) {
        qh_logf(QH_LOG_ERROR, "iterate: release tmp: %s", qh_strerror(rc));
        return 1;
    }
    round_no++;
    if (round_no < rounds) return qh_timer_after(1, KIND_ROUND, "", 0) < 0;
    qh_tensor_release(act);
    qh_tensor_release(acc);
    qh_logf(QH_LOG_INFO, "done: sum %.3f", sum);
    if (report_to[0]) {
        char text[64];
        int n = snprintf(text, sizeof text, "%.3f", sum);
        qh_send(qh_lookup_str(report_to), KIND_REPORT, text, (size_t)n);
    }
    return 0;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    if (kind == KIND_START) return start();
    if (kind == KIND_ROUND) return round_jobs();
    if (kind == QH_KIND_GPU_DONE) {
        qh_gpu_done_t done;
        if (qh_parse_gpu_done(payload, len, &done) != 0) return 1;
        if (done.status != 0) {
            qh_logf(QH_LOG_ERROR, "iterate: job %d failed: %.*s", (int)done.job,
                    (int)done.error_len, done.error);
            return 1;
        }
        return --jobs_left == 0 ? round_done() : 0;
    }
    return 0;
}
