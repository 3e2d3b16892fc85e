/*
 * planner: fans work out to a group of workers and gathers the results.
 *
 *   kind 1, payload i64 N      starts a job: sends the N work items (kind 2, payload i64
 *                              index 0 .. N-1) round-robin to the workers
 *   kind 3, payload i64 index, i64 value
 *                              one result; when all N are in, logs the total and sends it
 *                              (kind 4, one i64) to the agent named by config "report_to"
 *
 * Config (the scenario's [agents.config]):
 *
 *   workers    the worker group's name (default "worker"): its instances are "worker" when
 *              the group has count = 1, else "worker-0", "worker-1", ...
 *   report_to  the agent instance that receives the total (default: nobody, only the log)
 *
 * One job runs at a time: a kind 1 that arrives before the previous job is complete fails.
 * Results for another index, or a second result for the same index, are errors too.
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "planner"
 *     module = "../agents/planner.wasm"
 *     config = { workers = "worker", report_to = "sink" }
 *
 *     [[agents]]
 *     name = "worker"
 *     module = "../agents/worker.wasm"
 *     count = 4
 *
 *     [[messages]]
 *     to = "planner"
 *     kind = 1
 *     payload_i64 = [100]
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <stdlib.h>

enum { KIND_START = 1, KIND_ITEM = 2, KIND_RESULT = 3, KIND_TOTAL = 4 };

/* Names are agent names: identifiers plus "-<index>", far below these sizes. */
#define NAME_MAX_LEN 64
/* A job bigger than this is refused: each item is one message of the next tick. */
#define MAX_ITEMS (1 << 20)

static char workers_group[NAME_MAX_LEN] = "worker";
static char report_to[NAME_MAX_LEN]; /* empty: no report */

/* Worker ids, resolved on the first job (names are looked up once; ids do not change). */
static int32_t *worker_ids;
static int32_t worker_count;

/* The job in progress. */
static int64_t job_items;     /* N; 0 when no job runs */
static int64_t job_received;  /* results in so far */
static uint64_t job_total;    /* sum of the values, wrapping */
static uint8_t *job_received_flags; /* one byte per item: its result is in */

/* Read a string config value into out[NAME_MAX_LEN]; a missing key keeps the default. */
static int config_name(const char *json, size_t len, const char *key, char *out) {
    char value[NAME_MAX_LEN];
    long n = qh_json_get_str(json, len, key, value, sizeof value);
    if (n == QH_JSON_MISSING) return 0;
    if (n < 0) {
        qh_logf(QH_LOG_ERROR, "planner: config %s must be a string", key);
        return -1;
    }
    if (n == 0 || n >= NAME_MAX_LEN) {
        qh_logf(QH_LOG_ERROR, "planner: config %s must be an agent name of 1 to %d bytes", key,
                NAME_MAX_LEN - 1);
        return -1;
    }
    memcpy(out, value, (size_t)n + 1);
    return 0;
}

int32_t qh_init(const char *config, size_t len) {
    if (config_name(config, len, "workers", workers_group) != 0) return 1;
    if (config_name(config, len, "report_to", report_to) != 0) return 1;
    return 0;
}

/* Find the workers: the group's single instance, or its instances -0, -1, ... in order. */
static int resolve_workers(void) {
    int32_t id = qh_lookup_str(workers_group);
    if (id >= 0) {
        worker_ids = malloc(sizeof *worker_ids);
        if (worker_ids == NULL) return -1;
        worker_ids[0] = id;
        worker_count = 1;
        return 0;
    }
    int32_t cap = 0;
    for (int32_t i = 0;; i++) {
        char name[NAME_MAX_LEN + 16];
        snprintf(name, sizeof name, "%s-%d", workers_group, (int)i);
        id = qh_lookup_str(name);
        if (id < 0) break;
        if (i == cap) {
            cap = cap ? cap * 2 : 8;
            int32_t *grown = realloc(worker_ids, (size_t)cap * sizeof *worker_ids);
            if (grown == NULL) return -1;
            worker_ids = grown;
        }
        worker_ids[i] = id;
        worker_count = i + 1;
    }
    return 0;
}

static int32_t start_job(const uint8_t *payload, size_t len) {
    if (len != 8) {
        qh_logf(QH_LOG_ERROR, "planner: kind 1 needs one i64 (the item count), got %zu bytes",
                len);
        return 1;
    }
    int64_t n = qh_get_i64(payload);
    if (n < 0 || n > MAX_ITEMS) {
        qh_logf(QH_LOG_ERROR, "planner: item count %lld outside 0 .. %d", (long long)n,
                MAX_ITEMS);
        return 1;
    }
    if (job_items > 0) {
        qh_logf(QH_LOG_ERROR, "planner: a job of %lld items is still running (%lld in)",
                (long long)job_items, (long long)job_received);
        return 1;
    }
    if (worker_ids == NULL && resolve_workers() != 0) {
        qh_log_str(QH_LOG_ERROR, "planner: out of memory");
        return 1;
    }
    if (worker_count == 0) {
        qh_logf(QH_LOG_ERROR, "planner: no agent named %s or %s-0 to work for it",
                workers_group, workers_group);
        return 1;
    }
    if (n == 0) {
        qh_log_str(QH_LOG_INFO, "planner: empty job, total 0");
        return 0;
    }
    free(job_received_flags);
    job_received_flags = calloc((size_t)n, 1);
    if (job_received_flags == NULL) {
        qh_log_str(QH_LOG_ERROR, "planner: out of memory");
        return 1;
    }
    job_items = n;
    job_received = 0;
    job_total = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t rc = qh_send_i64(worker_ids[i % worker_count], KIND_ITEM, i);
        if (rc != QH_OK) {
            /* The message fails, so none of the items sent so far are delivered either. */
            qh_logf(QH_LOG_ERROR, "planner: send to worker %d failed (%d)",
                    (int)worker_ids[i % worker_count], (int)rc);
            job_items = 0;
            return 1;
        }
    }
    qh_logf(QH_LOG_INFO, "planner: %lld items sent to %d workers", (long long)n,
            (int)worker_count);
    return 0;
}

static int32_t finish_job(void) {
    int64_t total = (int64_t)job_total;
    qh_logf(QH_LOG_INFO, "planner: all %lld results in, total %lld", (long long)job_items,
            (long long)total);
    job_items = 0;
    free(job_received_flags);
    job_received_flags = NULL;
    if (report_to[0] == '\0') return 0;
    int32_t to = qh_lookup_str(report_to);
    if (to < 0) {
        qh_logf(QH_LOG_WARNING, "planner: report_to agent %s does not exist", report_to);
        return 0;
    }
    return qh_send_i64(to, KIND_TOTAL, total) == QH_OK ? 0 : 1;
}

static int32_t take_result(int32_t from, const uint8_t *payload, size_t len) {
    if (len != 16) {
        qh_logf(QH_LOG_ERROR, "planner: a result is two i64 (16 bytes), got %zu bytes", len);
        return 1;
    }
    int64_t index = qh_get_i64(payload), value = qh_get_i64(payload + 8);
    if (index < 0 || index >= job_items || job_received_flags[index]) {
        qh_logf(QH_LOG_ERROR, "planner: unexpected result for item %lld from %d",
                (long long)index, (int)from);
        return 1;
    }
    job_received_flags[index] = 1;
    job_total += (uint64_t)value;
    if (++job_received == job_items) return finish_job();
    return 0;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    switch (kind) {
    case KIND_START: return start_job(payload, len);
    case KIND_RESULT: return take_result(from, payload, len);
    default:
        qh_logf(QH_LOG_DEBUG, "planner: ignoring kind %d from %d", (int)kind, (int)from);
        return 0;
    }
}
