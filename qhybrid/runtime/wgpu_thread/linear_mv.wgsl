// qhybrid: y[M, N] = x[M, K] @ W[N, K]^T for small M (decode): matrix x vector.
//
// One workgroup of WG invocations computes ROWS output rows for all M (<= MAX_M) inputs: each
// invocation dequantizes groups of 4 weights (load4 from the ${qtype} section of quant.wgsl) and
// multiplies them with every input row, so each weight block is read once per call whatever
// M is. The partial sums then meet through subgroup sums where the device has them, else in
// workgroup memory. Workgroups beyond 65535 fold into a second grid dimension. A matrix split
// across bindings runs once per part: its rows are output columns row0 .. row0 + n.
${enables}
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_bytes: u32,
    y_stride: u32,  // N of the whole matrix: a part of a split one writes columns row0..
    row0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${weight}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u;
const MAX_M: u32 = 8u;
const SUMS: u32 = 32u;  // ROWS * MAX_M

${quant}

var<workgroup> partial: array<f32, ${partial_size}>;

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    ${sg_params}
) {
    let m_count = params.m;
    let n_count = params.n;
    let k_count = params.k;
    let row0 = (wg.y * groups.x + wg.x) * ROWS;

    var acc: array<f32, 32>;
    for (var i: u32 = 0u; i < SUMS; i = i + 1u) {
        acc[i] = 0.0;
    }
    for (var r: u32 = 0u; r < ROWS; r = r + 1u) {
        let row = row0 + r;
        if (row >= n_count) {
            break;
        }
        let rb = row * params.row_bytes;
        for (var k: u32 = lid * 4u; k < k_count; k = k + WG * 4u) {
            let wv = load4(rb, k, k_count);
            for (var m: u32 = 0u; m < m_count; m = m + 1u) {
                let xi = m * k_count + k;
                var xv: vec4<f32>;
                if (k + 4u <= k_count) {
                    xv = vec4<f32>(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
                } else {
                    xv = vec4<f32>(0.0);
                    for (var j: u32 = 0u; j < k_count - k; j = j + 1u) {
                        xv[j] = x[xi + j];
                    }
                }
                acc[r * MAX_M + m] = acc[r * MAX_M + m] + dot(wv, xv);
            }
        }
    }
${reduce}
}
