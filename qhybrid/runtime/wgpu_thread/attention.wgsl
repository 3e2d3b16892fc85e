// qhybrid: causal grouped-query attention over a KV cache, continuous batching.
//
// q[T, Hq, D]; caches [S, L, Hkv, D]; query t of sequence slot[t] at position pos[t] attends
// to that slot's positions 0..pos[t] (pos[t]-window+1..pos[t] when window > 0: a sliding-window
// layer), scores soft-capped as cap * tanh(s / cap) when cap > 0. One workgroup of 64 per (query head, token): keys go
// 64 at a time (one score per invocation), with an online softmax (running max and sum) so
// any context length takes one pass; invocation i accumulates output dims i, i+64, ... (D <= 256).
${enables}
struct Params {
    t: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    l: u32,
    factor: f32,
    window: u32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read> slot: array<u32>;
@group(0) @binding(5) var<storage, read> pos: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const MAX_D: u32 = 256u;
${reduce}

var<workgroup> q_s: array<f32, 256>;
var<workgroup> p_s: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    ${sg_params}
) {
    ${sg_init}
    let h = wg.x;
    let t = wg.y;
    let d_count = params.d;
    let group = params.hq / params.hkv;
    let kv = h / group;
    let q_base = (t * params.hq + h) * d_count;
    for (var i = lid; i < d_count; i = i + WG) {
        q_s[i] = q[q_base + i];
    }
    workgroupBarrier();
    let row = params.hkv * d_count;
    let seq = slot[t] * params.l * row + kv * d_count;
    let n_keys = pos[t] + 1u;
    var first = 0u;
    if (params.window > 0u && n_keys > params.window) {
        first = n_keys - params.window;
    }

    var m = -3.4028235e38;
    var l_sum = 0.0;
    var acc: array<f32, 4>;
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        acc[j] = 0.0;
    }
    for (var kb: u32 = first; kb < n_keys; kb = kb + WG) {
        let key = kb + lid;
        var s = -3.4028235e38;
        if (key < n_keys) {
            let kbase = seq + key * row;
            var dot_qk = 0.0;
            for (var i: u32 = 0u; i < d_count; i = i + 1u) {
                dot_qk = dot_qk + q_s[i] * k_cache[kbase + i];
            }
            s = dot_qk * params.factor;
            if (params.cap > 0.0) {
                s = params.cap * tanh(clamp(s / params.cap, -10.0, 10.0));
            }
        }
        let m_new = max(m, wg_max(s, lid));
        var p = 0.0;
        if (key < n_keys) {
            p = exp(s - m_new);
        }
        p_s[lid] = p;
        let block_sum = wg_sum(p, lid);
        let alpha = exp(m - m_new);
        l_sum = l_sum * alpha + block_sum;
        let n_block = min(WG, n_keys - kb);
        for (var j: u32 = 0u; j < 4u; j = j + 1u) {
            let d = lid + j * WG;
            if (d < d_count) {
                var a = acc[j] * alpha;
                for (var kk: u32 = 0u; kk < n_block; kk = kk + 1u) {
                    a = a + p_s[kk] * v_cache[seq + (kb + kk) * row + d];
                }
                acc[j] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        let d = lid + j * WG;
        if (d < d_count) {
            out[q_base + d] = acc[j] / l_sum;
        }
    }
}
