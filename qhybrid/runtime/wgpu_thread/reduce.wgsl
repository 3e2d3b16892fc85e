// qhybrid: workgroup-wide sum and max for WG invocations (a power of two), one template with
// two bodies: through subgroup operations where the device has them (//@ subgroups), else a
// tree in workgroup memory (//@ shared). Every invocation must call them (uniform control
// flow); every invocation gets the result. The entry point stores its subgroup builtins in
// sg_lane / sg_size before the first call.

var<private> sg_lane: u32;
var<private> sg_size: u32;
var<workgroup> red: array<f32, WG>;

//@ subgroups
fn wg_sum(v: f32, lid: u32) -> f32 {
    let s = subgroupAdd(v);
    if (sg_lane == 0u) {
        red[lid / sg_size] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i: u32 = 0u; i < WG / sg_size; i = i + 1u) {
        total = total + red[i];
    }
    workgroupBarrier();
    return total;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    let s = subgroupMax(v);
    if (sg_lane == 0u) {
        red[lid / sg_size] = s;
    }
    workgroupBarrier();
    var best = red[0];
    for (var i: u32 = 1u; i < WG / sg_size; i = i + 1u) {
        best = max(best, red[i]);
    }
    workgroupBarrier();
    return best;
}
//@ shared
fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s: u32 = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s: u32 = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let best = red[0];
    workgroupBarrier();
    return best;
}
