/*
 * echo: sends every message back to its sender, with the same kind and payload.
 *
 * Messages from the runtime (from = -1: scenario messages, task, GPU and LLM notices) have no
 * sender to answer, so they are logged instead, with their payload when it is short text.
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "echo"
 *     module = "../agents/echo.wasm"
 */
#define QH_IMPLEMENTATION /* the default qh_abi_version and qh_alloc */
#include "qhybrid.h"

/* Whether the payload is printable ASCII text, worth putting in a log line as it is. */
static int is_short_text(const uint8_t *payload, size_t len) {
    if (len > 200) return 0;
    for (size_t i = 0; i < len; i++)
        if (payload[i] < 0x20 || payload[i] > 0x7E) return 0;
    return 1;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    if (from == QH_FROM_RUNTIME) {
        if (is_short_text(payload, len))
            qh_logf(QH_LOG_INFO, "echo: from the runtime, kind %d: \"%.*s\"", (int)kind,
                    (int)len, (const char *)payload);
        else
            qh_logf(QH_LOG_INFO, "echo: from the runtime, kind %d, %zu bytes", (int)kind, len);
        return 0;
    }
    /* The host copies the payload when send is called, so the scratch buffer that holds the
     * incoming payload can be sent straight back. */
    int32_t rc = qh_send(from, kind, payload, len);
    if (rc != QH_OK) {
        /* Cannot happen for a message that an agent sent (its kind is not reserved and the
         * sender exists); if it does, fail the message so that the run shows it. */
        qh_logf(QH_LOG_ERROR, "echo: send to agent %d failed (%d)", (int)from, (int)rc);
        return 1;
    }
    return 0;
}
