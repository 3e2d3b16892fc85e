/*
 * prep: preprocesses a shared tensor and hands it to the GPU.
 *
 *   kind 1 (any payload)  reads the float32 tensor config "input" (default "x"), normalises
 *                         each row to zero mean and unit variance, writes the result to a new
 *                         tensor config "output" (default "x_norm"), then submits the GPU job
 *                         matmul(output, config "weights" (default "w")) -> config "result"
 *                         (default "y")
 *   GPU_DONE              logs the job's status and, when config "report_to" names an agent,
 *                         sends it kind 5 with two i64: the job id and the status
 *
 * A row is the last dimension: a [256, 512] tensor has 256 rows of 512 values; a 1-D tensor
 * is one row. Rows are processed in blocks of at most 64 KiB, so memory stays small whatever
 * the tensor's size. The output exists from the end of this tick, and the GPU job runs at the
 * next one: it sees the normalised values.
 *
 * The output name can be created once: a second kind 1 fails with "name already taken".
 *
 * Scenario use (with x [256, 512] and w [512, 256] as [[tensors]]):
 *
 *     [[agents]]
 *     name = "prep"
 *     module = "../agents/prep.wasm"
 *     config = { input = "x", weights = "w", output = "x_norm", result = "y" }
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

#include <math.h>
#include <stdlib.h>

enum { KIND_RUN = 1, KIND_REPORT = 5 };

#define NAME_MAX_LEN 64
#define BLOCK_BYTES (64 * 1024)
/* Added to the variance, as layer normalisation does: a constant row becomes all zeros
 * instead of a division by zero. */
#define EPSILON 1e-5

static char input_name[NAME_MAX_LEN] = "x";
static char output_name[NAME_MAX_LEN] = "x_norm";
static char weights_name[NAME_MAX_LEN] = "w";
static char result_name[NAME_MAX_LEN] = "y";
static char report_to[NAME_MAX_LEN];

static int config_name(const char *json, size_t len, const char *key, char *out) {
    char value[NAME_MAX_LEN];
    long n = qh_json_get_str(json, len, key, value, sizeof value);
    if (n == QH_JSON_MISSING) return 0;
    if (n <= 0 || n >= NAME_MAX_LEN) {
        qh_logf(QH_LOG_ERROR, "prep: config %s must be a name of 1 to %d bytes", key,
                NAME_MAX_LEN - 1);
        return -1;
    }
    memcpy(out, value, (size_t)n + 1);
    return 0;
}

int32_t qh_init(const char *config, size_t len) {
    if (config_name(config, len, "input", input_name) ||
        config_name(config, len, "output", output_name) ||
        config_name(config, len, "weights", weights_name) ||
        config_name(config, len, "result", result_name) ||
        config_name(config, len, "report_to", report_to))
        return 1;
    return 0;
}

/* Normalise `rows` rows of `cols` floats in place. */
static void normalise_rows(float *data, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = data + r * cols;
        double sum = 0.0, squares = 0.0;
        for (int64_t c = 0; c < cols; c++) sum += row[c];
        double mean = sum / (double)cols;
        for (int64_t c = 0; c < cols; c++) {
            double d = row[c] - mean;
            squares += d * d;
        }
        double inv_std = 1.0 / sqrt(squares / (double)cols + EPSILON);
        for (int64_t c = 0; c < cols; c++) row[c] = (float)((row[c] - mean) * inv_std);
    }
}

static int32_t run(void) {
    int32_t in = qh_tensor_open_str(input_name);
    if (in < 0) {
        qh_logf(QH_LOG_ERROR, "prep: no tensor named %s", input_name);
        return 1;
    }
    qh_tensor_info_t info;
    if (qh_tensor_info(in, &info) != QH_OK) return 1;
    if (info.dtype != QH_DTYPE_F32 || info.ndim < 1 || info.ndim > QH_MAX_DIMS) {
        qh_logf(QH_LOG_ERROR, "prep: %s must be float32 (dtype %d, %d dims)", input_name,
                (int)info.dtype, (int)info.ndim);
        return 1;
    }
    int64_t cols = info.dims[info.ndim - 1], rows = 1;
    for (int32_t d = 0; d < info.ndim - 1; d++) rows *= info.dims[d];
    if (rows <= 0 || cols <= 0) {
        qh_logf(QH_LOG_ERROR, "prep: %s is empty", input_name);
        return 1;
    }
    size_t row_bytes = (size_t)cols * sizeof(float);

    int32_t out = qh_tensor_create_str(output_name, QH_DTYPE_F32, info.ndim, info.dims);
    if (out < 0) {
        qh_logf(QH_LOG_ERROR, "prep: cannot create tensor %s: %s", output_name,
                qh_strerror(out));
        return 1;
    }

    /* Whole rows per block, at least one. */
    int64_t block_rows = row_bytes >= BLOCK_BYTES ? 1 : (int64_t)(BLOCK_BYTES / row_bytes);
    if (block_rows > rows) block_rows = rows;
    float *block = malloc((size_t)block_rows * row_bytes);
    if (block == NULL) {
        qh_log_str(QH_LOG_ERROR, "prep: out of memory");
        return 1;
    }
    int32_t rc = 0;
    for (int64_t r = 0; r < rows && rc >= 0; r += block_rows) {
        int64_t n = rows - r < block_rows ? rows - r : block_rows;
        int32_t offset = (int32_t)(r * (int64_t)row_bytes);
        size_t bytes = (size_t)n * row_bytes;
        rc = qh_tensor_read(in, offset, block, bytes);
        if (rc < 0) {
            qh_logf(QH_LOG_ERROR, "prep: reading %s: %s", input_name, qh_strerror(rc));
            break;
        }
        normalise_rows(block, n, cols);
        rc = qh_tensor_write(out, offset, block, bytes);
        if (rc < 0) qh_logf(QH_LOG_ERROR, "prep: writing %s: %s", output_name, qh_strerror(rc));
    }
    free(block);
    if (rc < 0) return 1;

    int32_t inputs[2] = {out, qh_tensor_open_str(weights_name)};
    if (inputs[1] < 0) {
        qh_logf(QH_LOG_ERROR, "prep: no tensor named %s", weights_name);
        return 1;
    }
    int32_t job = qh_gpu_submit_str("matmul", inputs, 2, result_name, 0.0f);
    if (job < 0) {
        qh_logf(QH_LOG_ERROR, "prep: gpu_submit(matmul, %s, %s -> %s): %s", output_name,
                weights_name, result_name, qh_strerror(job));
        return 1;
    }
    qh_logf(QH_LOG_INFO, "prep: normalised %lld rows of %s into %s; GPU job %d computes %s",
            (long long)rows, input_name, output_name, (int)job, result_name);
    return 0;
}

static int32_t gpu_done(const uint8_t *payload, size_t len) {
    qh_gpu_done_t done;
    if (qh_parse_gpu_done(payload, len, &done) != 0) return 1;
    if (done.status == 0)
        qh_logf(QH_LOG_INFO, "prep: GPU job %d done", (int)done.job);
    else
        qh_logf(QH_LOG_ERROR, "prep: GPU job %d failed (status %d): %.*s", (int)done.job,
                (int)done.status, (int)done.error_len, done.error);
    if (report_to[0] == '\0') return 0;
    int32_t to = qh_lookup_str(report_to);
    if (to < 0) {
        qh_logf(QH_LOG_WARNING, "prep: report_to agent %s does not exist", report_to);
        return 0;
    }
    uint8_t report[16];
    qh_put_i64(report, done.job);
    qh_put_i64(report + 8, done.status);
    return qh_send(to, KIND_REPORT, report, sizeof report) == QH_OK ? 0 : 1;
}

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    if (kind == KIND_RUN) return run();
    if (kind == QH_KIND_GPU_DONE && from == QH_FROM_RUNTIME) return gpu_done(payload, len);
    qh_logf(QH_LOG_DEBUG, "prep: ignoring kind %d from %d", (int)kind, (int)from);
    return 0;
}
