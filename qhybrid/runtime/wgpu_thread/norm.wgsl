// qhybrid: RMSNorm (mode 0) or LayerNorm (mode 1) over the last axis, one workgroup per row.
// The optional weight and bias are flags in params (a placeholder buffer is bound instead).
${enables}
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    flags: u32,  // 1: weight, 2: bias, 4: layernorm
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
${reduce}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    ${sg_params}
) {
    ${sg_init}
    let row = wg.y * groups.x + wg.x;
    if (row >= params.rows) {
        return;
    }
    let cols = params.cols;
    let base = row * cols;
    let flags = params.flags;
    var mean = 0.0;
    if ((flags & 4u) != 0u) {
        var s = 0.0;
        for (var i = lid; i < cols; i = i + WG) {
            s = s + x[base + i];
        }
        mean = wg_sum(s, lid) / f32(cols);
    }
    var ss = 0.0;
    for (var i = lid; i < cols; i = i + WG) {
        let d = x[base + i] - mean;
        ss = ss + d * d;
    }
    let inv = 1.0 / sqrt(wg_sum(ss, lid) / f32(cols) + params.eps);
    for (var i = lid; i < cols; i = i + WG) {
        var v = (x[base + i] - mean) * inv;
        if ((flags & 1u) != 0u) {
            v = v * weight[i];
        }
        if ((flags & 2u) != 0u) {
            v = v + bias[i];
        }
        out[base + i] = v;
    }
}
