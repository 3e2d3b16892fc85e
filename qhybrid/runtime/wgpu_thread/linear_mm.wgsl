// qhybrid: c[M, N] = a[M, K] @ B, tiled and register-blocked (prefill, and the plain matmul).
//
// ${what}
// A 16x16 workgroup computes a 64x64 tile of c, each invocation a 4x4 block held in
// registers; each step stages a 64x32 slice of a and a 32x64 slice of B in workgroup memory
// (out-of-range elements as 0, so no size need be a multiple of a tile). Sums run in
// increasing k, the same order every run.
${enables}
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_bytes: u32,
    y_stride: u32,  // columns of c: n, or the whole matrix's N for a part of a split one
    row0: u32,      // the part's first column of c
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
${weight}
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

${quant}

var<workgroup> tile_a: array<f32, 2048>;  // [TK][TM]
var<workgroup> tile_b: array<f32, 2048>;  // [TK][TN]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m_count = params.m;
    let n_count = params.n;
    let k_count = params.k;
    let m0 = wg.y * TM;
    let n0 = wg.x * TN;

    var acc: array<f32, 16>;
    for (var i: u32 = 0u; i < 16u; i = i + 1u) {
        acc[i] = 0.0;
    }
    let steps = (k_count + TK - 1u) / TK;
    for (var step: u32 = 0u; step < steps; step = step + 1u) {
        let k0 = step * TK;
        // a: 64 x 32 values, 8 per invocation; consecutive invocations read consecutive k.
        for (var i: u32 = 0u; i < 8u; i = i + 1u) {
            let e = lid + i * 256u;
            let mm = e / TK;
            let kk = e % TK;
            var v = 0.0;
            if (m0 + mm < m_count && k0 + kk < k_count) {
                v = a[(m0 + mm) * k_count + k0 + kk];
            }
            tile_a[kk * TM + mm] = v;
        }
${load_b}
        workgroupBarrier();
        for (var kk: u32 = 0u; kk < TK; kk = kk + 1u) {
            let av = vec4<f32>(
                tile_a[kk * TM + lid3.y], tile_a[kk * TM + lid3.y + 16u],
                tile_a[kk * TM + lid3.y + 32u], tile_a[kk * TM + lid3.y + 48u]);
            let bv = vec4<f32>(
                tile_b[kk * TN + lid3.x], tile_b[kk * TN + lid3.x + 16u],
                tile_b[kk * TN + lid3.x + 32u], tile_b[kk * TN + lid3.x + 48u]);
            for (var i: u32 = 0u; i < 4u; i = i + 1u) {
                acc[i * 4u + 0u] = acc[i * 4u + 0u] + av[i] * bv.x;
                acc[i * 4u + 1u] = acc[i * 4u + 1u] + av[i] * bv.y;
                acc[i * 4u + 2u] = acc[i * 4u + 2u] + av[i] * bv.z;
                acc[i * 4u + 3u] = acc[i * 4u + 3u] + av[i] * bv.w;
            }
        }
        workgroupBarrier();
    }
    for (var i: u32 = 0u; i < 4u; i = i + 1u) {
        let row = m0 + lid3.y + 16u * i;
        for (var j: u32 = 0u; j < 4u; j = j + 1u) {
            let col = n0 + lid3.x + 16u * j;
            if (row < m_count && col < n_count) {
                c[row * params.y_stride + params.row0 + col] = acc[i * 4u + j];
            }
        }
    }
}
