// qhybrid: per-row selection, one workgroup per row: argmax (MODE 0), top-k (MODE 1) and
// sampling (MODE 2: top-k, temperature, top-p, one uniform draw per row).
//
// Top-k is k rounds of a workgroup argmax, each over the values ranked below the last pick
// (larger value first, then lower index), so ties go to the lower index as in the reference.
// Sampling then runs the reference's sequential steps on at most 64 candidates in one invocation.
const MODE: u32 = ${mode}u;
const WG: u32 = 256u;
const MAX_K: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    k: u32,            // top-k (MODE 1) or the scalar top_k (MODE 2; 0 = MAX_K)
    flags: u32,        // MODE 2: 1 per-row temperature, 2 per-row top_k, 4 per-row top_p
    temperature: f32,
    top_p: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${bindings}

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> pick_v: array<f32, MAX_K>;
var<workgroup> pick_i: array<u32, MAX_K>;

// a ranks before b: larger value, then lower index.
fn before(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
    return av > bv || (av == bv && ai < bi);
}

// The best element of the row that ranks after (prev_v, prev_i); every invocation gets it.
fn select_next(base: u32, cols: u32, lid: u32, prev_v: f32, prev_i: u32, first: bool) -> vec2<u32> {
    var bv = -3.4028235e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < cols; i = i + WG) {
        let v = x[base + i];
        let eligible = first || before(prev_v, prev_i, v, i);
        if (eligible && (bi == 0xffffffffu || before(v, i, bv, bi))) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s: u32 = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (oi != 0xffffffffu && (best_i[lid] == 0xffffffffu || before(ov, oi, best_v[lid], best_i[lid]))) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = vec2<u32>(bitcast<u32>(best_v[0]), best_i[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.y * 65535u + wg.x;
    if (row >= params.rows) {
        return;
    }
    let cols = params.cols;
    let base = row * cols;
    var k = params.k;
    ${row_setup}
    k = min(min(k, MAX_K), cols);
    var prev_v = 0.0;
    var prev_i = 0u;
    for (var r: u32 = 0u; r < k; r = r + 1u) {
        let b = select_next(base, cols, lid, prev_v, prev_i, r == 0u);
        prev_v = bitcast<f32>(b.x);
        prev_i = b.y;
        if (lid == 0u) {
            pick_v[r] = prev_v;
            pick_i[r] = prev_i;
        }
    }
    if (lid != 0u) {
        return;
    }
    ${finish}
}
