/*
 * qhybrid.h: write qhybrid agents in C (agent ABI version 1).
 *
 * The contract itself is docs/agent-abi.md; this header declares it for C and adds a few
 * helpers. Build with sdk/build.py, or by hand:
 *
 *     clang --target=wasm32-wasi -mexec-model=reactor -std=c11 -O2 -Isdk/c \
 *           -Wl,--stack-first -Wl,--strip-debug -o agent.wasm agent.c
 *
 * A minimal agent:
 *
 *     #define QH_IMPLEMENTATION      // once per agent: default qh_abi_version and qh_alloc
 *     #include "qhybrid.h"
 *
 *     int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
 *         qh_logf(QH_LOG_INFO, "got kind %d (%zu bytes) from %d", kind, len, from);
 *         return 0;
 *     }
 *
 * Exports. This header declares the ABI's exports (qh_abi_version, qh_alloc, qh_on_message,
 * qh_init, qh_snapshot, qh_restore) with their export names attached, so an agent only has to
 * define them with these signatures; the optional ones it leaves undefined are simply not
 * exported. Use QH_EXPORT(name) for any further export.
 *
 * Imports. Every host function of module "qhybrid" is declared below as qh_<name>
 * (qh_send, qh_log, qh_tensor_read, ...). Pointers and lengths are i32 in the ABI; here they
 * are C pointers and size_t, which are 32-bit on wasm32, so the WebAssembly signatures are
 * exactly the ABI's. Only the functions an agent calls end up as imports of its module.
 *
 * Reactor model. -mexec-model=reactor makes a module without main() that exports
 * _initialize (it runs C constructors and sets up wasi-libc). The runtime calls _initialize
 * once, before qh_abi_version, qh_alloc or qh_init, whenever a module exports it.
 *
 * Memory and state. An agent's state lives in its linear memory (globals, malloc), which the
 * runtime snapshots as a whole unless the agent exports qh_snapshot/qh_restore. Payload
 * pointers are valid only during the call that receives them: copy what must be kept.
 *
 * C11, for clang --target=wasm32-wasi. Not for C++.
 */
#ifndef QHYBRID_H
#define QHYBRID_H

#if defined(__cplusplus)
#error "qhybrid.h is a C11 header; compile agents as C (clang --target=wasm32-wasi -std=c11)"
#endif
#if !defined(__wasm32__)
#error "qhybrid.h is for agents compiled to WebAssembly: clang --target=wasm32-wasi"
#endif

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Constants                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/** The ABI version this header implements; qh_abi_version() must return it. */
#define QH_ABI_VERSION 1

/** `from` of messages sent by the runtime (task, GPU and LLM notices, scenario messages). */
#define QH_FROM_RUNTIME (-1)

/** Kinds from here up are reserved for the runtime; qh_send refuses them. */
#define QH_KIND_RESERVED_BASE 0x7F000000
/** A scenario task listed this agent in `notify`; payload: UTF-8 JSON
 *  {"task", "op", "output", "shape", "sum"}. */
#define QH_KIND_TASK_DONE 0x7F000001
/** A job from qh_gpu_submit finished; parse the payload with qh_parse_gpu_done. */
#define QH_KIND_GPU_DONE 0x7F000002
/** A request from qh_llm_complete finished; parse the payload with qh_parse_llm_done. */
#define QH_KIND_LLM_DONE 0x7F000003

/** Log levels, as Python's logging. */
#define QH_LOG_DEBUG 10
#define QH_LOG_INFO 20
#define QH_LOG_WARNING 30
#define QH_LOG_ERROR 40

/** The longest log line, in bytes; qh_log_str and qh_logf cut longer ones (at a UTF-8
 *  character boundary). */
#define QH_LOG_MAX 4096
/** The largest payload qh_send takes. */
#define QH_MESSAGE_MAX (16 * 1024 * 1024)

/** Tensor element types (qh_tensor_info's dtype, qh_tensor_create's dtype). */
#define QH_DTYPE_F32 0
#define QH_DTYPE_F16 1
#define QH_DTYPE_I32 2
#define QH_DTYPE_U8 3
/** Tensors have 1 to QH_MAX_DIMS dimensions. */
#define QH_MAX_DIMS 4

/** Return codes of the host functions. The meaning of -1 and -2 depends on the function:
 *  for qh_send -1 is an unknown agent and -2 a reserved kind; for the tensor and GPU
 *  functions the codes below are the same everywhere (see qh_strerror). */
#define QH_OK 0
#define QH_ERR_UNKNOWN_AGENT (-1) /* qh_send: no agent with that id */
#define QH_ERR_RESERVED_KIND (-2) /* qh_send: kind < 0 or >= QH_KIND_RESERVED_BASE */
#define QH_ERR_NOT_FOUND (-1)     /* qh_lookup, qh_tensor_open, qh_peer: no such name/index */
#define QH_ERR_BAD_HANDLE (-1)    /* tensor functions, qh_gpu_submit */
#define QH_ERR_RANGE (-2)         /* qh_tensor_read/write: bytes outside the tensor */
#define QH_ERR_NOT_READY (-3)     /* qh_tensor_read: created this tick, readable from the next */
#define QH_ERR_READ_ONLY (-4)     /* qh_tensor_write: neither created by this agent nor writable */
#define QH_ERR_NAME_TAKEN (-5)    /* qh_tensor_create, qh_gpu_submit: output name exists */
#define QH_ERR_BAD_SHAPE (-6)     /* qh_tensor_create: bad dtype or shape */
#define QH_ERR_BAD_OP (-7)        /* qh_gpu_submit: unknown op, or shapes that do not fit */

/* ------------------------------------------------------------------------------------------ */
/* Exports                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/** Export a function under `name`: QH_EXPORT(my_fn) int32_t my_fn(void) { ... } */
#define QH_EXPORT(name) __attribute__((export_name(#name)))
/** Declare a host function of module "qhybrid". */
#define QH_IMPORT(name) __attribute__((import_module("qhybrid"), import_name(#name)))

/** Required: returns QH_ABI_VERSION. Defined by QH_IMPLEMENTATION. */
QH_EXPORT(qh_abi_version) int32_t qh_abi_version(void);

/** Required: a pointer to `size` writable bytes, where the host writes the next payload (or
 *  the config, or a state to restore). The bytes are needed only until the call that follows
 *  returns. Defined by QH_IMPLEMENTATION: one growing scratch buffer, trapping when malloc
 *  fails (the message then fails as out of memory). */
QH_EXPORT(qh_alloc) void *qh_alloc(size_t size);

/** Required: handle one message. `from` is the sender's id or QH_FROM_RUNTIME; the payload
 *  is `len` bytes, valid until this returns. Return 0 when handled; any other value fails
 *  the message, and then nothing it sent, wrote or created takes effect. */
QH_EXPORT(qh_on_message)
int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len);

/** Optional: called once after _initialize with the agent's config table as UTF-8 JSON
 *  (keys sorted, no NUL terminator); read it with qh_json_get_str/qh_json_get_int.
 *  Non-zero refuses the agent. */
QH_EXPORT(qh_init) int32_t qh_init(const char *config_json, size_t len);

/** Optional: serialise the state by calling qh_snapshot_put once; return 0. */
QH_EXPORT(qh_snapshot) int32_t qh_snapshot(void);

/** Optional: restore a state made by qh_snapshot, in a fresh instance after qh_init. */
QH_EXPORT(qh_restore) int32_t qh_restore(const uint8_t *state, size_t len);

/* ------------------------------------------------------------------------------------------ */
/* Imports: messages, time, randomness                                                        */
/* ------------------------------------------------------------------------------------------ */

/** Queue `len` bytes (at most QH_MESSAGE_MAX) for agent `to`, delivered at the next tick.
 *  QH_OK, QH_ERR_UNKNOWN_AGENT or QH_ERR_RESERVED_KIND. */
QH_IMPORT(send) int32_t qh_send(int32_t to, int32_t kind, const void *data, size_t len);

/** Log one UTF-8 line of at most QH_LOG_MAX bytes at `level` (QH_LOG_*). */
QH_IMPORT(log) void qh_log(int32_t level, const char *text, size_t len);

/** The next value of this agent's own deterministic random stream. */
QH_IMPORT(random_u64) uint64_t qh_random_u64(void);

/** The logical clock: the tick being handled. */
QH_IMPORT(now) int64_t qh_now(void);

/** This agent's id. */
QH_IMPORT(self_id) int32_t qh_self_id(void);

/** How many agents exist; ids run from 0 in declaration order. */
QH_IMPORT(agent_count) int32_t qh_agent_count(void);

/** How many instances this agent's group has. */
QH_IMPORT(peer_count) int32_t qh_peer_count(void);

/** The id of instance `index` of this agent's group, or -1. */
QH_IMPORT(peer) int32_t qh_peer(int32_t index);

/** The id of the agent instance with this UTF-8 name ("sink", "relay-3"), or -1. */
QH_IMPORT(lookup) int32_t qh_lookup(const char *name, size_t len);

/** Only inside qh_snapshot: hand the host the bytes of the agent's state. */
QH_IMPORT(snapshot_put) void qh_snapshot_put(const void *data, size_t len);

/* ------------------------------------------------------------------------------------------ */
/* Imports: shared tensors, GPU jobs, the LLM                                                 */
/* ------------------------------------------------------------------------------------------ */

/** What qh_tensor_info writes: six i32. Unused dims are 0. */
typedef struct qh_tensor_info {
    int32_t dtype; /* QH_DTYPE_* */
    int32_t ndim;
    int32_t dims[QH_MAX_DIMS];
} qh_tensor_info_t;

/** A handle for the tensor with this name, or QH_ERR_NOT_FOUND. */
QH_IMPORT(tensor_open) int32_t qh_tensor_open(const char *name, size_t len);

/** Fill *out. QH_OK or QH_ERR_BAD_HANDLE. */
QH_IMPORT(tensor_info) int32_t qh_tensor_info(int32_t handle, qh_tensor_info_t *out);

/** Copy `len` bytes from byte `offset` of the tensor (as it was at the start of the tick) to
 *  `dst`. Returns `len`, or QH_ERR_BAD_HANDLE, QH_ERR_RANGE, QH_ERR_NOT_READY. */
QH_IMPORT(tensor_read)
int32_t qh_tensor_read(int32_t handle, int32_t offset, void *dst, size_t len);

/** Write `len` bytes at byte `offset`, applied at the end of the tick. QH_OK, or
 *  QH_ERR_BAD_HANDLE, QH_ERR_RANGE, QH_ERR_READ_ONLY. */
QH_IMPORT(tensor_write)
int32_t qh_tensor_write(int32_t handle, int32_t offset, const void *src, size_t len);

/** Declare a zero-filled tensor with `ndim` (1 to 4) dims read from `shape`; it exists from the
 *  end of the tick, but the handle returned works at once with qh_tensor_write and
 *  qh_gpu_submit. A handle >= 0, or QH_ERR_NAME_TAKEN, QH_ERR_BAD_SHAPE. */
QH_IMPORT(tensor_create)
int32_t qh_tensor_create(const char *name, size_t name_len, int32_t dtype, int32_t ndim,
                         const int32_t *shape);

/** Queue op ("matmul", "add", "mul", "scale", "relu") on `n_inputs` tensor handles; the result
 *  becomes the tensor `out_name`; `param` is scale's factor. A job id >= 0, after which a
 *  QH_KIND_GPU_DONE message arrives; or QH_ERR_BAD_HANDLE, QH_ERR_NAME_TAKEN, QH_ERR_BAD_OP. */
QH_IMPORT(gpu_submit)
int32_t qh_gpu_submit(const char *op, size_t op_len, const int32_t *inputs, int32_t n_inputs,
                      const char *out_name, size_t out_name_len, float param);

/** Ask the scenario's LLM to complete a UTF-8 prompt. A request id >= 0; the answer arrives
 *  as a QH_KIND_LLM_DONE message carrying `tag`. */
QH_IMPORT(llm_complete)
int32_t qh_llm_complete(const char *prompt, size_t len, int32_t max_tokens, int32_t tag);

/* Long-term memory (docs/agent-abi.md, "Long-term memory"): a key-value store of the agent's
 * own; reads see the memory as the tick began, writes apply at the tick's end. */
enum { QH_MEM_NOT_FOUND = -1, QH_MEM_QUOTA_KEYS = -2, QH_MEM_QUOTA_BYTES = -3, QH_MEM_BAD_KEY = -4 };

/** The value's length (copying at most cap bytes to out), or QH_MEM_NOT_FOUND. */
QH_IMPORT(mem_get) int32_t qh_mem_get(const void *key, int32_t key_len, void *out, int32_t cap);

/** 0, or QH_MEM_QUOTA_KEYS, QH_MEM_QUOTA_BYTES, QH_MEM_BAD_KEY. */
QH_IMPORT(mem_put)
int32_t qh_mem_put(const void *key, int32_t key_len, const void *value, int32_t value_len);

/** 1 if the key was there, else 0. */
QH_IMPORT(mem_delete) int32_t qh_mem_delete(const void *key, int32_t key_len);

/** The bytes the sorted keys with this prefix take (u32 length + key each); written if they fit. */
QH_IMPORT(mem_list)
int32_t qh_mem_list(const void *prefix, int32_t prefix_len, void *out, int32_t cap);

/* ------------------------------------------------------------------------------------------ */
/* Helpers                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/** Little-endian loads and stores (any alignment). */
static inline int32_t qh_get_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline int64_t qh_get_i64(const void *p) {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void qh_put_i32(void *p, int32_t v) { memcpy(p, &v, sizeof v); }
static inline void qh_put_i64(void *p, int64_t v) { memcpy(p, &v, sizeof v); }

/** The longest prefix of s[0..len) of at most `max` bytes that does not cut a UTF-8 character. */
static inline size_t qh_utf8_prefix(const char *s, size_t len, size_t max) {
    if (len <= max) return len;
    size_t n = max;
    /* Step back over continuation bytes (10xxxxxx) to the start of the cut character. */
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

/** Log a NUL-terminated string (cut to QH_LOG_MAX bytes). */
static inline void qh_log_str(int32_t level, const char *text) {
    size_t len = strlen(text);
    qh_log(level, text, qh_utf8_prefix(text, len, QH_LOG_MAX));
}

/** Log a printf-style line, cut to QH_LOG_MAX bytes. Uses a static buffer: not reentrant,
 *  which is fine since an agent handles one message at a time. */
__attribute__((format(printf, 2, 3))) static inline void qh_logf(int32_t level, const char *fmt,
                                                                   ...) {
    /* 3 bytes more than a line may have, so that a cut line still shows whether its last
     * character is whole (qh_utf8_prefix looks at the byte after the cut). */
    static char buf[QH_LOG_MAX + 4];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    qh_log(level, buf, qh_utf8_prefix(buf, len, QH_LOG_MAX));
}

/** qh_send with a NUL-terminated string as the payload (without the NUL). */
static inline int32_t qh_send_str(int32_t to, int32_t kind, const char *text) {
    return qh_send(to, kind, text, strlen(text));
}

/** qh_send with one little-endian i64 as the payload. */
static inline int32_t qh_send_i64(int32_t to, int32_t kind, int64_t value) {
    unsigned char buf[8];
    qh_put_i64(buf, value);
    return qh_send(to, kind, buf, sizeof buf);
}

/** qh_lookup with a NUL-terminated name. */
static inline int32_t qh_lookup_str(const char *name) { return qh_lookup(name, strlen(name)); }

/** qh_tensor_open with a NUL-terminated name. */
static inline int32_t qh_tensor_open_str(const char *name) {
    return qh_tensor_open(name, strlen(name));
}

/** qh_tensor_create with a NUL-terminated name. */
static inline int32_t qh_tensor_create_str(const char *name, int32_t dtype, int32_t ndim,
                                           const int32_t *shape) {
    return qh_tensor_create(name, strlen(name), dtype, ndim, shape);
}

/** qh_gpu_submit with NUL-terminated op and output names. */
static inline int32_t qh_gpu_submit_str(const char *op, const int32_t *inputs, int32_t n_inputs,
                                        const char *out_name, float param) {
    return qh_gpu_submit(op, strlen(op), inputs, n_inputs, out_name, strlen(out_name), param);
}

/** A short English description of a tensor/GPU return code (QH_ERR_*). */
static inline const char *qh_strerror(int32_t rc) {
    switch (rc) {
    case QH_OK: return "ok";
    case QH_ERR_BAD_HANDLE: return "bad handle or not found";
    case QH_ERR_RANGE: return "range outside the tensor";
    case QH_ERR_NOT_READY: return "tensor created this tick, not readable yet";
    case QH_ERR_READ_ONLY: return "tensor is read-only";
    case QH_ERR_NAME_TAKEN: return "name already taken";
    case QH_ERR_BAD_SHAPE: return "bad dtype or shape";
    case QH_ERR_BAD_OP: return "unknown op or shapes that do not fit";
    default: return rc >= 0 ? "ok" : "unknown error";
    }
}

/** The payload of a QH_KIND_GPU_DONE message. `error` points into the payload (not
 *  NUL-terminated) and is empty when status is 0. */
typedef struct qh_gpu_done {
    int32_t job;
    int32_t status; /* 0: done */
    const char *error;
    size_t error_len;
} qh_gpu_done_t;

/** Parse a QH_KIND_GPU_DONE payload. 0, or -1 when it is too short. */
static inline int qh_parse_gpu_done(const uint8_t *payload, size_t len, qh_gpu_done_t *out) {
    if (len < 8) return -1;
    out->job = qh_get_i32(payload);
    out->status = qh_get_i32(payload + 4);
    out->error = (const char *)payload + 8;
    out->error_len = len - 8;
    return 0;
}

/** The payload of a QH_KIND_LLM_DONE message. `text` points into the payload (not
 *  NUL-terminated): the completion when status is 0, else the error. */
typedef struct qh_llm_done {
    int32_t request;
    int32_t tag;
    int32_t status; /* 0: done */
    const char *text;
    size_t text_len;
} qh_llm_done_t;

/** Parse a QH_KIND_LLM_DONE payload. 0, or -1 when it is too short. */
static inline int qh_parse_llm_done(const uint8_t *payload, size_t len, qh_llm_done_t *out) {
    if (len < 12) return -1;
    out->request = qh_get_i32(payload);
    out->tag = qh_get_i32(payload + 4);
    out->status = qh_get_i32(payload + 8);
    out->text = (const char *)payload + 12;
    out->text_len = len - 12;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Config: a tiny reader for the flat JSON object that qh_init receives                       */
/* ------------------------------------------------------------------------------------------ */

/** Return codes of qh_json_get_str / qh_json_get_int. */
#define QH_JSON_MISSING (-1)    /* no such top-level key */
#define QH_JSON_WRONG_TYPE (-2) /* the key is there, its value has another type */
#define QH_JSON_MALFORMED (-3)  /* not a JSON object */

static inline void qh__json_ws(const char **p, const char *end) {
    while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')) ++*p;
}

static inline int qh__hex4(const char *p, const char *end, uint32_t *out) {
    if (end - p < 4) return -1;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Decode the JSON string whose opening quote *p points at and move *p past its closing quote.
 * Writes at most `cap` decoded bytes to `out` (which may be NULL) and returns the full decoded
 * length, or -1 when the string is malformed. */
static inline long qh__json_string(const char **p, const char *end, char *out, size_t cap) {
    const char *s = *p;
    if (s >= end || *s != '"') return -1;
    s++;
    size_t n = 0;
    while (s < end && *s != '"') {
        unsigned char utf8[4];
        size_t k = 0;
        if (*s != '\\') {
            utf8[k++] = (unsigned char)*s++;
        } else {
            if (++s >= end) return -1;
            char e = *s++;
            switch (e) {
            case '"': case '\\': case '/': utf8[k++] = (unsigned char)e; break;
            case 'b': utf8[k++] = '\b'; break;
            case 'f': utf8[k++] = '\f'; break;
            case 'n': utf8[k++] = '\n'; break;
            case 'r': utf8[k++] = '\r'; break;
            case 't': utf8[k++] = '\t'; break;
            case 'u': {
                uint32_t cp, lo;
                if (qh__hex4(s, end, &cp) != 0) return -1;
                s += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && end - s >= 6 && s[0] == '\\' && s[1] == 'u' &&
                    qh__hex4(s + 2, end, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    s += 6;
                } else if (cp >= 0xD800 && cp < 0xE000) {
                    cp = 0xFFFD; /* a lone surrogate */
                }
                if (cp < 0x80) {
                    utf8[k++] = (unsigned char)cp;
                } else if (cp < 0x800) {
                    utf8[k++] = (unsigned char)(0xC0 | (cp >> 6));
                    utf8[k++] = (unsigned char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    utf8[k++] = (unsigned char)(0xE0 | (cp >> 12));
                    utf8[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    utf8[k++] = (unsigned char)(0x80 | (cp & 0x3F));
                } else {
                    utf8[k++] = (unsigned char)(0xF0 | (cp >> 18));
                    utf8[k++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                    utf8[k++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    utf8[k++] = (unsigned char)(0x80 | (cp & 0x3F));
                }
                break;
            }
            default: return -1;
            }
        }
        for (size_t i = 0; i < k; i++, n++)
            if (out && n < cap) out[n] = (char)utf8[i];
    }
    if (s >= end) return -1;
    *p = s + 1;
    return (long)n;
}

/* Move *p past one JSON value (of any type). 0, or -1 when malformed. */
static inline int qh__json_skip(const char **p, const char *end) {
    int depth = 0;
    do {
        qh__json_ws(p, end);
        if (*p >= end) return -1;
        char c = **p;
        if (c == '"') {
            if (qh__json_string(p, end, NULL, 0) < 0) return -1;
        } else if (c == '[' || c == '{') {
            depth++;
            ++*p;
        } else if (c == ']' || c == '}') {
            if (depth == 0) return -1;
            depth--;
            ++*p;
        } else if (c == ',' || c == ':') {
            if (depth == 0) return -1;
            ++*p;
        } else {
            /* A number, true, false or null. */
            const char *start = *p;
            while (*p < end && !strchr(",:]} \t\r\n\"", **p)) ++*p;
            if (*p == start) return -1;
        }
    } while (depth > 0);
    return 0;
}

/* Find the value of top-level `key` in a JSON object: *value points at it. 0, or
 * QH_JSON_MISSING, QH_JSON_MALFORMED. */
static inline int qh__json_find(const char *json, size_t len, const char *key,
                                const char **value) {
    const char *p = json, *end = json + len;
    size_t key_len = strlen(key);
    char name[128];
    qh__json_ws(&p, end);
    if (p >= end || *p != '{') return QH_JSON_MALFORMED;
    p++;
    qh__json_ws(&p, end);
    if (p < end && *p == '}') return QH_JSON_MISSING;
    for (;;) {
        qh__json_ws(&p, end);
        long n = qh__json_string(&p, end, name, sizeof name);
        if (n < 0) return QH_JSON_MALFORMED;
        qh__json_ws(&p, end);
        if (p >= end || *p != ':') return QH_JSON_MALFORMED;
        p++;
        qh__json_ws(&p, end);
        if ((size_t)n == key_len && key_len <= sizeof name && memcmp(name, key, key_len) == 0) {
            *value = p;
            return 0;
        }
        if (qh__json_skip(&p, end) != 0) return QH_JSON_MALFORMED;
        qh__json_ws(&p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return (p < end && *p == '}') ? QH_JSON_MISSING : QH_JSON_MALFORMED;
    }
}

/** Copy the string value of top-level `key` of a JSON object into out[cap], NUL-terminated.
 *  Returns its decoded length in bytes (when it is >= cap, `out` holds a cut copy), or
 *  QH_JSON_MISSING, QH_JSON_WRONG_TYPE, QH_JSON_MALFORMED. Keys longer than 128 bytes are
 *  not found. */
static inline long qh_json_get_str(const char *json, size_t len, const char *key, char *out,
                                   size_t cap) {
    const char *v;
    int rc = qh__json_find(json, len, key, &v);
    if (rc != 0) return rc;
    if (*v != '"') return QH_JSON_WRONG_TYPE;
    long n = qh__json_string(&v, json + len, out, cap);
    if (n < 0) return QH_JSON_MALFORMED;
    if (cap > 0) out[(size_t)n < cap ? (size_t)n : cap - 1] = '\0';
    return n;
}

/** Store the integer value of top-level `key` of a JSON object in *out. 0, or
 *  QH_JSON_MISSING, QH_JSON_WRONG_TYPE (also for floats like 2.5 or 1e3, and for integers
 *  outside int64), QH_JSON_MALFORMED. */
static inline int qh_json_get_int(const char *json, size_t len, const char *key, int64_t *out) {
    const char *v, *end = json + len;
    int rc = qh__json_find(json, len, key, &v);
    if (rc != 0) return rc;
    int negative = 0;
    if (v < end && *v == '-') {
        negative = 1;
        v++;
    }
    if (v >= end || *v < '0' || *v > '9') return QH_JSON_WRONG_TYPE;
    uint64_t magnitude = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; v < end && *v >= '0' && *v <= '9'; v++) {
        uint64_t digit = (uint64_t)(*v - '0');
        if (magnitude > (limit - digit) / 10) return QH_JSON_WRONG_TYPE;
        magnitude = magnitude * 10 + digit;
    }
    if (v < end && (*v == '.' || *v == 'e' || *v == 'E')) return QH_JSON_WRONG_TYPE;
    *out = negative ? (int64_t)(0 - magnitude) : (int64_t)magnitude;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Default exports: #define QH_IMPLEMENTATION in one .c file before including this header     */
/* ------------------------------------------------------------------------------------------ */

#ifdef QH_IMPLEMENTATION
#include <stdlib.h>

int32_t qh_abi_version(void) { return QH_ABI_VERSION; }

#ifndef QH_NO_DEFAULT_ALLOC
/* One scratch buffer for every incoming payload. Each payload is needed only until the call
 * after qh_alloc returns, so the old contents never need to survive a resize: free + malloc
 * rather than realloc, which would copy them. */
static unsigned char *qh__scratch;
static size_t qh__scratch_cap;

void *qh_alloc(size_t size) {
    if (qh__scratch == NULL || size > qh__scratch_cap) {
        size_t cap = qh__scratch_cap ? qh__scratch_cap : 256;
        while (cap < size) cap = cap > SIZE_MAX / 2 ? size : cap * 2;
        free(qh__scratch);
        qh__scratch = malloc(cap);
        qh__scratch_cap = qh__scratch ? cap : 0;
        /* No memory left (the agent's memory_mb limit): trapping fails the message cleanly,
         * where returning NULL would let the host write the payload over address 0. */
        if (qh__scratch == NULL) __builtin_trap();
    }
    return qh__scratch;
}
#endif /* QH_NO_DEFAULT_ALLOC */
#endif /* QH_IMPLEMENTATION */

#endif /* QHYBRID_H */
