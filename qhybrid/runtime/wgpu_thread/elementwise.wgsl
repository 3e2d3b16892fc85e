// qhybrid: dst[i] = f(a[i] [, b[i % b_count]]), float32, one invocation per element.
//
// A template: ${inputs} declares b for binary ops (b may be a single row broadcast over a's
// rows: b_count divides count), ${expr} is the op's expression over a, b and params. Large
// tensors use a 2-D grid of workgroups (at most 65535 per dimension), so the flat index is
// rebuilt from both dimensions.

struct Params {
    count: u32,
    b_count: u32,
    factor: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
${inputs}
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

const WORKGROUP: u32 = 256u;

// max(x, 0) as numpy computes it: NaN stays NaN and -0 becomes +0. NaN is tested on the bits
// because WGSL lets a compiler assume that no float is NaN.
fn relu(x: f32) -> f32 {
    let is_nan = (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
    return select(0.0, x, x > 0.0 || is_nan);
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// ggml's tanh approximation; the argument is clamped because tanh(|z| > 10) is 1 in f32 and
// some drivers compute tanh through exp, which overflows.
fn gelu(x: f32) -> f32 {
    let z = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -10.0, 10.0);
    return 0.5 * x * (1.0 + tanh(z));
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
