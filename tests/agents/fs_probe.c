/*
 * fs_probe (test-only): probes what the WASI sandbox grants, answering in log lines.
 *
 *   kind 1, payload a path       fopen(path, "r") and read its first line:
 *                                  "read ok: <first line>"  or  "read failed: <strerror>"
 *   kind 2, payload a name       getenv(name):
 *                                  "env <name>=<value>"     or  "env <name> unset"
 *   kind 3, payload a path       fopen(path, "w") and write "probe\n":
 *                                  "write ok"               or  "write failed: <strerror>"
 *
 * All at info level; the message always succeeds (returns 0), so a test reads the outcome
 * from the log. The first line is cut at 200 bytes, without its newline.
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <errno.h>
#include <stdlib.h>

#define MAX_ARG 1024

/* The payload as a NUL-terminated string (cut at MAX_ARG - 1 bytes). */
static const char *arg(const uint8_t *payload, size_t len) {
    static char buf[MAX_ARG];
    if (len >= sizeof buf) len = sizeof buf - 1;
    memcpy(buf, payload, len);
    buf[len] = '\0';
    return buf;
}

static void probe_read(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        qh_logf(QH_LOG_INFO, "read failed: %s", strerror(errno));
        return;
    }
    char line[201];
    errno = 0;
    if (fgets(line, sizeof line, f) == NULL) {
        if (ferror(f))
            qh_logf(QH_LOG_INFO, "read failed: %s", strerror(errno ? errno : EIO));
        else
            qh_log_str(QH_LOG_INFO, "read ok: "); /* an empty file */
    } else {
        line[strcspn(line, "\r\n")] = '\0';
        qh_logf(QH_LOG_INFO, "read ok: %s", line);
    }
    fclose(f);
}

static void probe_write(const char *path) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        qh_logf(QH_LOG_INFO, "write failed: %s", strerror(errno));
        return;
    }
    int ok = fputs("probe\n", f) >= 0;
    int saved = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (ok)
        qh_log_str(QH_LOG_INFO, "write ok");
    else
        qh_logf(QH_LOG_INFO, "write failed: %s", strerror(saved));
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    const char *a = arg(payload, len);
    switch (kind) {
    case 1: probe_read(a); break;
    case 2: {
        const char *value = getenv(a);
        if (value == NULL)
            qh_logf(QH_LOG_INFO, "env %s unset", a);
        else
            qh_logf(QH_LOG_INFO, "env %s=%s", a, value);
        break;
    }
    case 3: probe_write(a); break;
    default: qh_logf(QH_LOG_INFO, "fs_probe: unknown kind %d", (int)kind); break;
    }
    return 0;
}
