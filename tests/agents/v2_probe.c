/* v2_probe: exercises ABI v2 for tests/runtime/test_abi_v2.py; every observation is a log line. */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

static int every = -1, fires = 0;

static void start(void) {
    char buf[128];
    every = qh_timer_every(2, 5, "", 0);
    qh_logf(QH_LOG_INFO, "timers %d %d", every, qh_timer_after(3, 6, "x", 1));
    qh_logf(QH_LOG_INFO, "bad delay %d", qh_timer_after(0, 6, "", 0));
    int32_t n = qh_config_get_str("model.temperature", buf, sizeof buf);
    qh_logf(QH_LOG_INFO, "temperature %d %s", n, n >= 0 ? buf : "-");
    n = qh_config_get_str("model", buf, sizeof buf);
    qh_logf(QH_LOG_INFO, "model %s", n >= 0 ? buf : "-");
    qh_logf(QH_LOG_INFO, "missing %d tiny %d", qh_config_get_str("nope", buf, sizeof buf),
            qh_config_get_str("model", buf, 4));
    qh_logf(QH_LOG_INFO, "subscribe %d", qh_subscribe_str("news"));
    qh_logf(QH_LOG_INFO, "reply %d", qh_reply_str(1, "x"));
    qh_logf(QH_LOG_INFO, "tool %d", qh_tool_call_str("nope", "{}", 0));
    qh_logf(QH_LOG_INFO, "group %d %d %d", qh_group_size_str("probe"),
            qh_group_member_str("probe", 1), qh_group_size_str("ghost"));
    qh_logf(QH_LOG_INFO, "ask %d", qh_ask_str("what is the answer?", 3));
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    switch (kind) {
    case 1: start(); return 0;
    case 5:
        fires++;
        qh_logf(QH_LOG_INFO, "every now=%lld timer=%d from=%d", (long long)qh_now(),
                qh_msg_timer(), from);
        if (fires == 3) qh_logf(QH_LOG_INFO, "cancel %d %d", qh_timer_cancel(every),
                                qh_timer_cancel(every));
        return 0;
    case 6:
        qh_logf(QH_LOG_INFO, "once now=%lld %.*s", (long long)qh_now(), (int)len, payload);
        return 0;
    case 7: return qh_publish_str("news", 8, "hello") == QH_OK ? 0 : 1;
    case 8:
        qh_logf(QH_LOG_INFO, "news from %d: %.*s", from, (int)len, payload);
        return 0;
    case 9: qh_set_error_str("custom failure"); return 1;
    case 10: qh_stop_self(); return 0;
    case 11: { /* request/reply: ask the other instance */
        int64_t corr = qh_new_corr();
        qh_logf(QH_LOG_INFO, "corr %lld", (long long)corr);
        return qh_send_env_str(qh_group_member_str("probe", 1), 12, corr, -1, "ping");
    }
    case 12:
        qh_logf(QH_LOG_INFO, "request corr %lld reply_to %d", (long long)qh_msg_corr(),
                qh_msg_reply_to());
        return qh_reply_str(13, "pong");
    case 13:
        qh_logf(QH_LOG_INFO, "reply corr %lld from %d: %.*s", (long long)qh_msg_corr(), from,
                (int)len, payload);
        return 0;
    case QH_KIND_ANSWER:
        qh_logf(QH_LOG_INFO, "answer %.*s", (int)len, payload);
        return 0;
    default: return 0;
    }
}
