/*
 * spawner: a manager that makes its workers at run time (ABI v2 spawn and stop_run).
 *
 * Kind 1 from the runtime starts it: it spawns `helpers` (config, default 3) instances of the
 * group named by `group` (config, default "crew"), each with the config {"index": i}. Each
 * SPAWNED answer carries the new agent's id: the manager sends it a job (kind 10, {"n": i}),
 * and sends it the next one when it answers (kind 11), `rounds` jobs each (config, default 1;
 * job n = round * 1000 + i). When every agent it spawned has answered its last job, it ends the
 * run with stop_run. A refused spawn (over the group's max_spawned) is logged and not waited for.
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_START = 1, KIND_JOB = 10, KIND_RESULT = 11 };

static int64_t helpers = 3, rounds = 1;
static int32_t spawned = 0, refused = 0, answered = 0;
static char group[64] = "crew";

static void start(void) {
    char buf[128];
    if (qh_config_get_str("helpers", buf, sizeof buf) > 0) helpers = atoll(buf);
    if (qh_config_get_str("rounds", buf, sizeof buf) > 0) rounds = atoll(buf);
    if (qh_config_get_str("group", buf, sizeof buf) > 2) {
        snprintf(group, sizeof group, "%.*s", (int)strlen(buf) - 2, buf + 1);
    }
    for (int64_t i = 0; i < helpers; i++) {
        char config[48];
        snprintf(config, sizeof config, "{\"index\":%lld}", (long long)i);
        int32_t id = qh_spawn_str(group, NULL, config, (int32_t)i);
        if (id < 0) qh_logf(QH_LOG_WARNING, "spawn %lld refused at once: %d", (long long)i, id);
    }
}

static void done_if_all(void) {
    if (spawned + refused == helpers && answered == spawned * rounds) {
        char reason[96];
        snprintf(reason, sizeof reason, "%d helpers answered %lld jobs each, %d refused", spawned,
                 (long long)rounds, refused);
        qh_logf(QH_LOG_INFO, "stop_run %d", qh_stop_run_str(reason));
    }
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    if (kind == KIND_START && from == QH_FROM_RUNTIME) {
        start();
        return 0;
    }
    if (kind == QH_KIND_SPAWNED) {
        int32_t agent = qh_spawned_agent(payload, len);
        int64_t tag = -1;
        qh_json_get_int((const char *)payload, len, "tag", &tag);
        if (agent < 0) {
            refused++;
            qh_logf(QH_LOG_WARNING, "spawn %lld refused: %.*s", (long long)tag, (int)len, payload);
            done_if_all();
            return 0;
        }
        spawned++;
        char name[64] = "";
        qh_json_get_str((const char *)payload, len, "name", name, sizeof name);
        qh_logf(QH_LOG_INFO, "spawned %s as agent %d", name, agent);
        char job[32];
        snprintf(job, sizeof job, "{\"n\":%lld}", (long long)tag);
        return qh_send_env_str(agent, KIND_JOB, qh_new_corr(), -1, job) == QH_OK ? 0 : 1;
    }
    if (kind == KIND_RESULT) {
        answered++;
        int64_t n = 0;
        qh_json_get_int((const char *)payload, len, "n", &n);
        if (n / 1000 + 1 < rounds) { /* the same agent's next job */
            char job[32];
            snprintf(job, sizeof job, "{\"n\":%lld}", (long long)(n + 1000));
            return qh_send_env_str(from, KIND_JOB, qh_new_corr(), -1, job) == QH_OK ? 0 : 1;
        }
        qh_logf(QH_LOG_INFO, "agent %d answered %.*s", from, (int)len, payload);
        done_if_all();
        return 0;
    }
    return 0;
}
