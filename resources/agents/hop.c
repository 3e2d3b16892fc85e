/*
 * hop: the C twin of relay.wat. Passes a (hops, acc) token to a random member of its group
 * until hops runs out, stirring the accumulator with its own random stream; then reports acc
 * to the agent named "sink" (if there is one).
 *
 *   kind 1, payload two i64 (hops, acc)   sends kind 1 (hops - 1, acc') to a random peer while
 *                                         hops > 0, else kind 2 (acc', one i64) to "sink"
 *   other kinds                           ignored
 *
 * It does the same arithmetic as relay.wat, so a scenario gives the same messages with
 * either module. `qhybrid bench scale` runs it as its C agent.
 *
 * Scenario use:
 *
 *     [[agents]]
 *     name = "hop"
 *     module = "../agents/hop.wasm"
 *     count = 1000
 */
#define QH_IMPLEMENTATION
#include "qhybrid.h"

enum { KIND_TOKEN = 1, KIND_RESULT = 2 };

int32_t qh_on_message(int32_t from, int32_t kind, const uint8_t *payload, size_t len) {
    (void)from;
    if (kind != KIND_TOKEN) return 0;
    if (len < 16) return 1;
    int64_t hops = qh_get_i64(payload);
    uint64_t acc = (uint64_t)qh_get_i64(payload + 8) * 6364136223846793005ULL + qh_random_u64();
    uint8_t out[16];
    if (hops > 0) {
        qh_put_i64(out, hops - 1);
        qh_put_i64(out + 8, (int64_t)acc);
        int32_t to = qh_peer((int32_t)(qh_random_u64() % (uint64_t)qh_peer_count()));
        return qh_send(to, KIND_TOKEN, out, 16) == QH_OK ? 0 : 1;
    }
    int32_t sink = qh_lookup("sink", 4);
    if (sink < 0) return 0;
    qh_put_i64(out, (int64_t)acc);
    return qh_send(sink, KIND_RESULT, out, 8) == QH_OK ? 0 : 1;
}
