// qhybrid: rotary embeddings on x[T, H, D] at positions pos[T] (llama.cpp's normal and neox
// modes). One invocation per pair; pairs past n_dims / 2 copy their two elements unchanged
// (nothing to do in place). ${inplace_note}
struct Params {
    t: u32,
    h: u32,
    d: u32,
    n_dims: u32,
    neox: u32,
    base: f32,
    // Linear rope scaling: positions are multiplied by this (1 / rope.scaling.factor).
    freq_scale: f32,
    // 1: pair i's angle is divided by factors[i] (Llama 3.1+'s rope_freqs.weight).
    has_factors: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pos: array<i32>;
@group(0) @binding(2) var<storage, read> factors: array<f32>;
${bindings}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pairs = params.d / 2u;
    let i = gid.x;
    let row = gid.y;  // t * H + h
    if (i >= pairs || row >= params.t * params.h) {
        return;
    }
    let t = row / params.h;
    let base = row * params.d;
    let half = params.n_dims / 2u;
    if (i >= half) {
        ${copy_tail}
        return;
    }
    let inv = pow(params.base, -f32(i) * (2.0 / f32(params.n_dims)));
    var theta = f32(pos[t]) * params.freq_scale * inv;
    if (params.has_factors != 0u) {
        theta = theta / factors[i];
    }
    let c = cos(theta);
    let s = sin(theta);
    var i0 = base + 2u * i;
    var i1 = i0 + 1u;
    if (params.neox != 0u) {
        i0 = base + i;
        i1 = base + i + half;
    }
    let x0 = ${src}[i0];
    let x1 = ${src}[i1];
    dst[i0] = x0 * c - x1 * s;
    dst[i1] = x0 * s + x1 * c;
}
