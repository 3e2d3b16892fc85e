// qhybrid: reading GGUF weights in a kernel. A template: ${qtype} selects one section.
//
// Every kernel that reads a weight binds it as `w` and calls `load4(rb, k, kmax)`: the four
// dequantized values W[row, k..k+3] of the row that starts at byte `rb` (k a multiple of 4;
// values at or past `kmax` read as 0 for the float formats, whose rows need not be a multiple
// of 4). Quantized blocks are not 4-byte aligned (a q8_0 block is 34 bytes), so the buffer is
// an array<u32> and bytes and f16 halves are cut out with shifts, as llama.cpp's WebGPU shaders
// do. Every block field starts at an even byte, so an f16 never straddles two words.

fn w_byte(off: u32) -> u32 {
    return (w[off >> 2u] >> ((off & 3u) * 8u)) & 0xffu;
}

// Four bytes from an even (not necessarily 4-aligned) offset.
fn w_u32(off: u32) -> u32 {
    let i = off >> 2u;
    if ((off & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

fn w_f16(off: u32) -> f32 {
    return unpack2x16float(w[off >> 2u] >> ((off & 2u) * 8u)).x;
}

fn bytes4(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 0xffu), f32((q >> 8u) & 0xffu), f32((q >> 16u) & 0xffu), f32(q >> 24u));
}

fn sbytes4(q: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
    return vec4<f32>(v >> vec4<u32>(24u));
}

//@ f32
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let i = (rb >> 2u) + k;
    var v = vec4<f32>(0.0);
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < kmax) {
            v[j] = bitcast<f32>(w[i + j]);
        }
    }
    return v;
}
//@ f16
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let e = (rb >> 1u) + k;
    var v = vec4<f32>(0.0);
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < kmax) {
            let h = unpack2x16float(w[(e + j) >> 1u]);
            v[j] = select(h.x, h.y, ((e + j) & 1u) == 1u);
        }
    }
    return v;
}
//@ f16_native
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let e = (rb >> 1u) + k;
    if (k + 4u <= kmax) {
        return vec4<f32>(f32(wh[e]), f32(wh[e + 1u]), f32(wh[e + 2u]), f32(wh[e + 3u]));
    }
    var v = vec4<f32>(0.0);
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < kmax) {
            v[j] = f32(wh[e + j]);
        }
    }
    return v;
}
//@ q8_0
// Block of 32: d (f16), 32 x int8. Value = d * q.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 34u;
    return w_f16(off) * sbytes4(w_u32(off + 2u + (k & 31u)));
}
//@ q4_0
// Block of 32: d (f16), 16 bytes; element j is the low nibble of byte j, element j + 16 the
// high nibble. Value = d * (q - 8).
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 18u;
    let within = k & 31u;
    let q = w_u32(off + 2u + (within & 15u));
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, within >= 16u);
    return w_f16(off) * (bytes4(nib) - vec4<f32>(8.0));
}
//@ q4_k
// Super-block of 256 (144 bytes, 4-aligned): d, dmin (f16), 12 bytes of 6-bit scales and
// mins for 8 sub-blocks of 32, 128 bytes of nibbles. Sub-blocks 2i and 2i+1 share bytes
// 32i..32i+31 (low, high nibbles). Value = d * sc * q - dmin * m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 144u;
    let within = k & 255u;
    let j = within >> 5u;
    let s = off + 4u;
    var sc: u32;
    var mn: u32;
    if (j < 4u) {
        sc = w_byte(s + j) & 63u;
        mn = w_byte(s + j + 4u) & 63u;
    } else {
        sc = (w_byte(s + j + 4u) & 0xfu) | ((w_byte(s + j - 4u) >> 6u) << 4u);
        mn = (w_byte(s + j + 4u) >> 4u) | ((w_byte(s + j) >> 6u) << 4u);
    }
    let q = w[(off + 16u + 32u * (j >> 1u) + (within & 31u)) >> 2u];
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, (j & 1u) == 1u);
    let d = w_f16(off) * f32(sc);
    let m = w_f16(off + 2u) * f32(mn);
    return d * bytes4(nib) - vec4<f32>(m);
}
//@ q6_k
// Super-block of 256 (210 bytes): ql[128] low nibbles, qh[64] high 2 bits, 16 int8 scales,
// d (f16). Element e: n = e / 128, quarter = (e % 128) / 32, l = e % 32; value =
// d * scale[8n + l/16 + 2 quarter] * (q - 32).
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 210u;
    let within = k & 255u;
    let n = within >> 7u;
    let quarter = (within >> 5u) & 3u;
    let l = within & 31u;
    let ql = w_u32(off + 64u * n + l + (quarter & 1u) * 32u);
    let lo = (ql >> ((quarter >> 1u) * 4u)) & 0x0f0f0f0fu;
    let qh = w_u32(off + 128u + 32u * n + l);
    let hi = (qh >> (2u * quarter)) & 0x03030303u;
    let sc = f32((bitcast<i32>(w_byte(off + 192u + 8u * n + (l >> 4u) + 2u * quarter) << 24u)) >> 24u);
    return (w_f16(off + 208u) * sc) * (bytes4(lo | (hi << 4u)) - vec4<f32>(32.0));
}
