// qhybrid: out[T, cols] = the rows ids[T] of a weight table (embedding lookup), dequantized
// with load4 (quant.wgsl, section ${qtype}). An id out of range gives a row of zeros.
${enables}
struct Params {
    t: u32,
    rows: u32,
    cols: u32,
    row_bytes: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
${weight}
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

${quant}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let k = gid.x * 4u;
    let cols = params.cols;
    if (t >= params.t || k >= cols) {
        return;
    }
    let id = ids[t];
    var v = vec4<f32>(0.0);
    if (id < params.rows) {
        v = load4(id * params.row_bytes, k, cols);
    }
    let o = t * cols + k;
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < cols) {
            out[o + j] = v[j];
        }
    }
}
