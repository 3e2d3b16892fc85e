// qhybrid: c[M,N] = a[M,K] @ b[K,N], float32, row-major.
//
// One 16x16 workgroup computes one 16x16 tile of c. Each step loads a 16x16 tile of a and of
// b into workgroup memory; out-of-range elements load as 0, so M, N and K need not be
// multiples of 16 (a padded k position contributes 0 * 0 to every sum). Each invocation sums
// its dot product in increasing k, the same order every run: no atomics, no split-k, so the
// result is bit-identical from run to run on the same device.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

const TILE: u32 = 16u;

var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let row = wg.y * TILE + lid.y;
    let col = wg.x * TILE + lid.x;
    let m = params.m;
    let n = params.n;
    let k = params.k;

    var acc: f32 = 0.0;
    let steps = (k + TILE - 1u) / TILE;
    for (var t: u32 = 0u; t < steps; t = t + 1u) {
        // Invocation (y, x) loads a[row, t*16 + x] and b[t*16 + y, col].
        let a_k = t * TILE + lid.x;
        var a_val: f32 = 0.0;
        if (row < m && a_k < k) {
            a_val = a[row * k + a_k];
        }
        tile_a[lid.y][lid.x] = a_val;

        let b_k = t * TILE + lid.y;
        var b_val: f32 = 0.0;
        if (b_k < k && col < n) {
            b_val = b[b_k * n + col];
        }
        tile_b[lid.y][lid.x] = b_val;

        workgroupBarrier();
        for (var i: u32 = 0u; i < TILE; i = i + 1u) {
            acc = acc + tile_a[lid.y][i] * tile_b[i][lid.x];
        }
        workgroupBarrier();
    }

    if (row < m && col < n) {
        c[row * n + col] = acc;
    }
}
