// qhybrid: llama.cpp's repetition penalty, in place: for each row b, every distinct token among
// recent[b, :counts[b]] has its logit divided by the penalty if positive, else multiplied.
// An invocation handles a token only where it first occurs, so no logit is touched twice.
struct Params {
    rows: u32,
    vocab: u32,
    recent: u32,  // R, the row length of recent
    penalty: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> recent: array<u32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.x;
    if (b >= params.rows) {
        return;
    }
    let n = min(counts[b], params.recent);
    let base = b * params.recent;
    for (var i = lid; i < n; i = i + 64u) {
        let id = recent[base + i];
        var first = id < params.vocab;
        for (var j: u32 = 0u; j < i && first; j = j + 1u) {
            first = recent[base + j] != id;
        }
        if (first) {
            let o = b * params.vocab + id;
            let v = logits[o];
            logits[o] = select(v * params.penalty, v / params.penalty, v > 0.0);
        }
    }
}
