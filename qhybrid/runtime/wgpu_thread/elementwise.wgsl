// qhybrid: dst[i] = f(a[i] [, b[i]]), float32, one invocation per element.
//
// A template: the runtime substitutes ${inputs} (the declaration of b for binary ops, or
// nothing) and ${expr} (the op's expression over a, b and params) before compiling, giving
// one pipeline per op. Large tensors use a 2-D grid of workgroups (at most 65535 per
// dimension), so the flat index is rebuilt from both dimensions.

struct Params {
    count: u32,
    factor: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;
${inputs}

const WORKGROUP: u32 = 256u;

// max(x, 0) as numpy computes it: NaN stays NaN and -0 becomes +0. NaN is tested on the bits
// because WGSL lets a compiler assume that no float is NaN.
fn relu(x: f32) -> f32 {
    let is_nan = (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
    return select(0.0, x, x > 0.0 || is_nan);
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.y * groups.x + wg.x) * WORKGROUP + lid.x;
    if (i >= params.count) {
        return;
    }
    dst[i] = ${expr};
}
