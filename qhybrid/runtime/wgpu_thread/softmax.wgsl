// qhybrid: softmax over the last axis of x * factor, max-subtracted; one workgroup per row.
${enables}
struct Params {
    rows: u32,
    cols: u32,
    factor: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

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
    let f = params.factor;
    var mx = -3.4028235e38;
    for (var i = lid; i < cols; i = i + WG) {
        mx = max(mx, x[base + i] * f);
    }
    mx = wg_max(mx, lid);
    var s = 0.0;
    for (var i = lid; i < cols; i = i + WG) {
        s = s + exp(x[base + i] * f - mx);
    }
    s = wg_sum(s, lid);
    for (var i = lid; i < cols; i = i + WG) {
        out[base + i] = exp(x[base + i] * f - mx) / s;
    }
}
