/*
 * manager: the tour's manager (ABI v2; see docs/tour.md), written in C.
 *
 *   kind 1 from the runtime   start: sends one job (kind 10, JSON {"n": i}) to every instance
 *                             of the groups in config `groups`, each with its own correlation
 *                             id, and starts a progress timer (kind 12, every 2 ticks)
 *   kind 11 (a reply)         a result {"n", "steps"}; matched to its job by correlation id.
 *                             When all are in: the timer is cancelled and the tool `sum` is
 *                             called with the steps
 *   TOOL_DONE                 logs the total, asks the LLM (llm_chat, JSON Schema output) for
 *                             a verdict, and publishes {"total"} on topic "done" (kind 13)
 *   LLM_CHAT_DONE             logs the answer
 *
 * Config: groups = ["crew", ...] (default ["crew"]).
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_START = 1, KIND_JOB = 10, KIND_RESULT = 11, KIND_TICK = 12, KIND_DONE = 13 };
enum { MAX_JOBS = 64 };

static int64_t job_corr[MAX_JOBS];
static int64_t job_steps[MAX_JOBS];
static int job_count, results_in, timer = -1;

static int send_jobs(const char *group) {
    int32_t size = qh_group_size_str(group);
    if (size < 0) {
        qh_logf(QH_LOG_ERROR, "manager: no group named %s", group);
        return 1;
    }
    for (int32_t i = 0; i < size && job_count < MAX_JOBS; i++) {
        char payload[64];
        qh_json_builder_t b;
        qh_jb_init(&b, payload, sizeof payload);
        qh_jb_begin(&b, '{');
        qh_jb_key(&b, "n");
        qh_jb_int(&b, job_count);
        qh_jb_end(&b, '}');
        int64_t corr = qh_new_corr();
        job_corr[job_count] = corr;
        job_steps[job_count] = -1;
        job_count++;
        if (qh_send_env_str(qh_group_member_str(group, i), KIND_JOB, corr, -1, payload) != QH_OK)
            return 1;
    }
    return 0;
}

static int start(void) {
    char group[QH_NAME_MAX + 3];
    for (int i = 0;; i++) {
        char path[32];
        snprintf(path, sizeof path, "groups.%d", i);
        int32_t n = qh_config_get_str(path, group, sizeof group);
        if (n < 0) {
            if (i == 0 && send_jobs("crew") != 0) return 1;
            break;
        }
        if (n < 2 || group[0] != '"') return 1; /* a JSON string: strip its quotes */
        group[n - 1] = 0;
        if (send_jobs(group + 1) != 0) return 1;
    }
    qh_logf(QH_LOG_INFO, "manager: sent %d jobs", job_count);
    timer = qh_timer_every(2, KIND_TICK, "", 0);
    return timer >= 0 ? 0 : 1;
}

static int result(const uint8_t *payload, size_t len) {
    int64_t corr = qh_msg_corr(), steps;
    if (qh_json_get_int((const char *)payload, len, "steps", &steps) != 0) {
        qh_set_error_str("manager: a result needs an integer \"steps\"");
        return 1;
    }
    for (int i = 0; i < job_count; i++) {
        if (job_corr[i] != corr || job_steps[i] >= 0) continue;
        job_steps[i] = steps;
        if (++results_in < job_count) return 0;
        qh_timer_cancel(timer);
        char args[1024];
        qh_json_builder_t b;
        qh_jb_init(&b, args, sizeof args);
        qh_jb_begin(&b, '{');
        qh_jb_key(&b, "values");
        qh_jb_begin(&b, '[');
        for (int j = 0; j < job_count; j++) qh_jb_int(&b, job_steps[j]);
        qh_jb_end(&b, ']');
        qh_jb_end(&b, '}');
        return qh_tool_call_str("sum", args, 0) >= 0 ? 0 : 1;
    }
    qh_set_error_str("manager: a result for no job of mine");
    return 1;
}

static const char *SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"verdict\":{\"enum\":[\"small\",\"large\"]}},"
    "\"required\":[\"verdict\"]}";

static int tool_done(const uint8_t *payload, size_t len) {
    int64_t status, total;
    if (qh_json_get_int((const char *)payload, len, "status", &status) != 0 || status != 0 ||
        qh_json_get_int((const char *)payload, len, "result", &total) != 0) {
        qh_logf(QH_LOG_ERROR, "manager: the tool failed: %.*s", (int)len, (const char *)payload);
        return 1;
    }
    qh_logf(QH_LOG_INFO, "manager: all %d results in, total %lld", job_count, (long long)total);
    char request[1024];
    snprintf(request, sizeof request,
             "{\"messages\":[{\"role\":\"system\",\"content\":\"Answer in JSON.\"},"
             "{\"role\":\"user\",\"content\":\"Is %lld a small or a large total?\"}],"
             "\"max_tokens\":24,\"temperature\":0,\"json_schema\":%s}",
             (long long)total, SCHEMA);
    if (qh_llm_chat_str(request, 1) < 0) return 1;
    char done[48];
    snprintf(done, sizeof done, "{\"total\":%lld}", (long long)total);
    return qh_publish_str("done", KIND_DONE, done) == QH_OK ? 0 : 1;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    switch (kind) {
    case KIND_START: return from == QH_FROM_RUNTIME ? start() : 0;
    case KIND_RESULT: return result(payload, len);
    case KIND_TICK:
        qh_logf(QH_LOG_INFO, "manager: %d of %d results in", results_in, job_count);
        return 0;
    case QH_KIND_TOOL_DONE: return tool_done(payload, len);
    case QH_KIND_LLM_CHAT_DONE: {
        char text[512];
        long n = qh_json_get_str((const char *)payload, len, "text", text, sizeof text);
        int64_t status = 1;
        qh_json_get_int((const char *)payload, len, "status", &status);
        if (status == 0 && n >= 0) qh_logf(QH_LOG_INFO, "manager: the LLM says %s", text);
        else qh_logf(QH_LOG_WARNING, "manager: llm: %.*s", (int)len, (const char *)payload);
        return 0;
    }
    default: return 0;
    }
}
