/*
 * ask: puts questions to the scenario's LLM and logs the answers.
 *
 *   kind 1, payload UTF-8 prompt   calls llm_complete(prompt, max_tokens, tag), where the tag
 *                                  numbers the questions 0, 1, 2, ...
 *   LLM_DONE                       logs "answer: <text>", or "llm error: <text>" when the
 *                                  status is not 0 (a scenario without a model answers status 1)
 *
 * Config: max_tokens (default 32, from 1 to 4096).
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "ask"
 *     module = "../agents/ask.wasm"
 *     config = { max_tokens = 64 }
 *
 *     [[messages]]
 *     to = "ask"
 *     kind = 1
 *     payload = "The capital of France is"
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_ASK = 1 };

static int32_t max_tokens = 32;
static int32_t next_tag; /* one per question, so answers can be matched to questions */

int32_t qh_init(const char *config, size_t len) {
    int64_t value;
    int rc = qh_json_get_int(config, len, "max_tokens", &value);
    if (rc == QH_JSON_MISSING) return 0;
    if (rc != 0 || value < 1 || value > 4096) {
        qh_log_str(QH_LOG_ERROR, "ask: config max_tokens must be an integer from 1 to 4096");
        return 1;
    }
    max_tokens = (int32_t)value;
    return 0;
}

static int32_t ask(const uint8_t *prompt, size_t len) {
    if (len == 0) {
        qh_log_str(QH_LOG_ERROR, "ask: empty prompt");
        return 1;
    }
    int32_t tag = next_tag;
    int32_t request = qh_llm_complete((const char *)prompt, len, max_tokens, tag);
    if (request < 0) {
        qh_logf(QH_LOG_ERROR, "ask: llm_complete refused the prompt (%d)", (int)request);
        return 1;
    }
    next_tag++;
    qh_logf(QH_LOG_INFO, "ask: question %d is request %d (%zu bytes, up to %d tokens)",
            (int)tag, (int)request, len, (int)max_tokens);
    return 0;
}

static int32_t answer(const uint8_t *payload, size_t len) {
    qh_llm_done_t done;
    if (qh_parse_llm_done(payload, len, &done) != 0) {
        qh_logf(QH_LOG_ERROR, "ask: LLM_DONE payload too short (%zu bytes)", len);
        return 1;
    }
    /* qh_logf cuts the line at QH_LOG_MAX bytes, on a UTF-8 character boundary. */
    if (done.status == 0)
        qh_logf(QH_LOG_INFO, "answer: %.*s", (int)done.text_len, done.text);
    else
        qh_logf(QH_LOG_WARNING, "llm error: %.*s", (int)done.text_len, done.text);
    return 0;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    if (kind == KIND_ASK) return ask(payload, len);
    if (kind == QH_KIND_LLM_DONE && from == QH_FROM_RUNTIME) return answer(payload, len);
    qh_logf(QH_LOG_DEBUG, "ask: ignoring kind %d from %d", (int)kind, (int)from);
    return 0;
}
