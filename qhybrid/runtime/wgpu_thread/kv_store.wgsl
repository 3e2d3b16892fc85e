// qhybrid: cache[S, L, Hkv, D][slot[t], pos[t]] = x[t] for every token t, in place.
struct Params {
    count: u32,  // T * Hkv * D
    row: u32,    // Hkv * D
    l: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> slot: array<u32>;
@group(0) @binding(3) var<storage, read> pos: array<u32>;
@group(0) @binding(4) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * groups.x + wg.x) * 256u + lid;
    if (i >= params.count) {
        return;
    }
    let t = i / params.row;
    let r = i % params.row;
    cache[(slot[t] * params.l + pos[t]) * params.row + r] = x[i];
}
