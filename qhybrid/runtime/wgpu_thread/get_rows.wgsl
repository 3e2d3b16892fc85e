// qhybrid: out[T, cols] = the rows ids[T] of a weight table (embedding lookup), dequantized
// with load4 (quant.wgsl, section ${qtype}). An id out of range gives a row of zeros. A table
// split across bindings runs once per part (rows row0 .. row0 + rows): each writes the ids in
// its rows, the first part (row0 0) also the zero rows of ids past the whole table.
${enables}
struct Params {
    t: u32,
    rows: u32,
    cols: u32,
    row_bytes: u32,
    row0: u32,
    total_rows: u32,
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
    let local = id - params.row0;  // wraps past the part's rows when id < row0
    var v = vec4<f32>(0.0);
    if (id >= params.row0 && local < params.rows) {
        v = load4(local * params.row_bytes, k, cols);
    } else if (params.row0 != 0u || id < params.total_rows) {
        return;  // another part's row
    }
    let o = t * cols + k;
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < cols) {
            out[o + j] = v[j];
        }
    }
}
