/*
 * notes: long-term memory (the mem_* imports). It keeps a note per message in its memory
 * and counts the runs it has seen, so with a persistent namespace the count goes on from
 * one run to the next.
 *
 *   kind 1, any payload   stores the payload as note "note/<n>" (n counts up from 0) and
 *                         logs how many notes it holds now
 *   kind 2                logs the run number and every note it remembers, in key order
 *
 * On its first message of a run it bumps "runs" (a decimal count) by one. Writes take effect
 * at the end of the tick, so what it reads is the memory as the tick began.
 *
 * Scenario use:
 *
 *     [memory]
 *     namespace = "notes-demo"   # keep the memory across runs (in the run store)
 *
 *     [[agents]]
 *     name = "notes"
 *     module = "../agents/notes.wasm"
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_NOTE = 1, KIND_SHOW = 2 };

static int started; /* this run's first message seen (memory, so snapshots keep it) */
static int64_t next_note;
static char buf[4096];

static int64_t get_count(const char *key) {
    char text[24] = {0};
    int32_t n = qh_mem_get(key, (int32_t)strlen(key), text, sizeof text - 1);
    return n > 0 ? atoll(text) : 0;
}

static void put_count(const char *key, int64_t value) {
    char text[24];
    int n = snprintf(text, sizeof text, "%lld", (long long)value);
    qh_mem_put(key, (int32_t)strlen(key), text, n);
}

static void start_run(void) {
    if (started)
        return;
    started = 1;
    int64_t runs = get_count("runs") + 1;
    put_count("runs", runs);
    next_note = get_count("notes");
    qh_logf(QH_LOG_INFO, "notes: run %lld, %lld notes remembered", (long long)runs,
            (long long)next_note);
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    start_run();
    if (kind == KIND_NOTE) {
        char key[32];
        int n = snprintf(key, sizeof key, "note/%06lld", (long long)next_note);
        int32_t rc = qh_mem_put(key, n, payload, (int32_t)len);
        if (rc != 0) {
            qh_logf(QH_LOG_WARNING, "notes: memory refused note %lld (code %d)",
                    (long long)next_note, (int)rc);
            return 0;
        }
        next_note++;
        put_count("notes", next_note);
        qh_logf(QH_LOG_INFO, "notes: %lld notes", (long long)next_note);
        return 0;
    }
    if (kind == KIND_SHOW) {
        int32_t size = qh_mem_list("note/", 5, buf, sizeof buf);
        if (size > (int32_t)sizeof buf) {
            qh_logf(QH_LOG_WARNING, "notes: %d bytes of keys do not fit", (int)size);
            return 0;
        }
        for (int32_t at = 0; at + 4 <= size;) {
            uint32_t klen;
            memcpy(&klen, buf + at, 4);
            char key[260] = {0};
            memcpy(key, buf + at + 4, klen < 256 ? klen : 256);
            char value[200] = {0};
            int32_t vlen = qh_mem_get(key, (int32_t)klen, value, sizeof value - 1);
            qh_logf(QH_LOG_INFO, "notes: %s = %.*s", key, (int)(vlen < 199 ? vlen : 199), value);
            at += 4 + (int32_t)klen;
        }
        return 0;
    }
    return 0;
}
