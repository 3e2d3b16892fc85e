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

// The fifth bits of elements within..within+3 (qh: bit j for element j) at bit 4 of each byte.
fn high_bits4(qh: u32, within: u32) -> u32 {
    let b = qh >> within;
    return ((b & 1u) | ((b & 2u) << 7u) | ((b & 4u) << 14u) | ((b & 8u) << 21u)) << 4u;
}

// Sub-block j's 6-bit (scale, min) of q4_k and q5_k: 12 bytes at s (ggml's get_scale_min_k4).
fn k_scale_min(s: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(w_byte(s + j) & 63u, w_byte(s + j + 4u) & 63u);
    }
    return vec2<u32>(
        (w_byte(s + j + 4u) & 0xfu) | ((w_byte(s + j - 4u) >> 6u) << 4u),
        (w_byte(s + j + 4u) >> 4u) | ((w_byte(s + j) >> 6u) << 4u));
}

// IQ4_NL's and IQ4_XS's 16 levels (ggml-common.h's kvalues_iq4nl), for four nibbles.
var<private> KVALUES: array<f32, 16> = array<f32, 16>(
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
    1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

fn kvalues4(nib: u32) -> vec4<f32> {
    return vec4<f32>(KVALUES[nib & 0xfu], KVALUES[(nib >> 8u) & 0xfu],
        KVALUES[(nib >> 16u) & 0xfu], KVALUES[nib >> 24u]);
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
//@ bf16
// bfloat16: the high half of a float32.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let e = (rb >> 1u) + k;
    var v = vec4<f32>(0.0);
    for (var j: u32 = 0u; j < 4u; j = j + 1u) {
        if (k + j < kmax) {
            let word = w[(e + j) >> 1u];
            v[j] = bitcast<f32>(select(word << 16u, word & 0xffff0000u, ((e + j) & 1u) == 1u));
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
//@ q4_1
// Block of 32: d, m (f16), 16 bytes of nibbles as q4_0. Value = d * q + m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 20u;
    let within = k & 31u;
    let q = w_u32(off + 4u + (within & 15u));
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, within >= 16u);
    return w_f16(off) * bytes4(nib) + vec4<f32>(w_f16(off + 2u));
}
//@ q5_0
// Block of 32: d (f16), qh (32 fifth bits, bit j for element j), 16 bytes of nibbles as
// q4_0. Value = d * (q - 16).
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 22u;
    let within = k & 31u;
    let q = w_u32(off + 6u + (within & 15u));
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, within >= 16u);
    return w_f16(off) * (bytes4(nib | high_bits4(w_u32(off + 2u), within)) - vec4<f32>(16.0));
}
//@ q5_1
// Block of 32: d, m (f16), qh, 16 bytes of nibbles as q5_0. Value = d * q + m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 24u;
    let within = k & 31u;
    let q = w[(off + 8u + (within & 15u)) >> 2u];
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, within >= 16u);
    let hi = high_bits4(w[(off + 4u) >> 2u], within);
    return w_f16(off) * bytes4(nib | hi) + vec4<f32>(w_f16(off + 2u));
}
//@ iq4_nl
// Block of 32: d (f16), 16 bytes of nibbles as q4_0, each an index into KVALUES.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 5u) * 18u;
    let within = k & 31u;
    let q = w_u32(off + 2u + (within & 15u));
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, within >= 16u);
    return w_f16(off) * kvalues4(nib);
}
//@ q2_k
// Super-block of 256 (84 bytes): 16 scale bytes (low nibble scale, high nibble min of each
// 16), 64 bytes of 2-bit values, d, dmin (f16). Element e: h = e / 128, j = e % 128 / 32,
// l = e % 32: q = qs[32 h + l] >> 2 j & 3. Value = d * sc * q - dmin * m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 84u;
    let within = k & 255u;
    let h = within >> 7u;
    let j = (within >> 5u) & 3u;
    let l = within & 31u;
    let q = (w_u32(off + 16u + 32u * h + l) >> (2u * j)) & 0x03030303u;
    let s = w_byte(off + (within >> 4u));
    let d = w_f16(off + 80u) * f32(s & 15u);
    let m = w_f16(off + 82u) * f32(s >> 4u);
    return d * bytes4(q) - vec4<f32>(m);
}
//@ q3_k
// Super-block of 256 (110 bytes): hmask[32] (third bits), qs[64] (2-bit values as q2_k),
// 12 bytes of 16 6-bit scales, d (f16). The third bit of element e is hmask[e % 32] >> (e / 32)
// & 1; a clear bit subtracts 4. Value = d * (scale - 32) * q.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 110u;
    let within = k & 255u;
    let h = within >> 7u;
    let j = (within >> 5u) & 3u;
    let l = within & 31u;
    let lo = (w_u32(off + 32u + 32u * h + l) >> (2u * j)) & 0x03030303u;
    let hb = (w_u32(off + l) >> (within >> 5u)) & 0x01010101u;
    let i = within >> 4u;
    let s = off + 96u;
    let sc = ((w_byte(s + (i & 7u)) >> (4u * (i >> 3u))) & 15u)
        | (((w_byte(s + 8u + (i & 3u)) >> (2u * (i >> 2u))) & 3u) << 4u);
    let d = w_f16(off + 108u) * (f32(sc) - 32.0);
    return d * (bytes4(lo | (hb << 2u)) - vec4<f32>(4.0));
}
//@ q4_k
// Super-block of 256 (144 bytes, 4-aligned): d, dmin (f16), 12 bytes of 6-bit scales and
// mins for 8 sub-blocks of 32, 128 bytes of nibbles. Sub-blocks 2i and 2i+1 share bytes
// 32i..32i+31 (low, high nibbles). Value = d * sc * q - dmin * m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 144u;
    let within = k & 255u;
    let j = within >> 5u;
    let sm = k_scale_min(off + 4u, j);
    let q = w[(off + 16u + 32u * (j >> 1u) + (within & 31u)) >> 2u];
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, (j & 1u) == 1u);
    let d = w_f16(off) * f32(sm.x);
    let m = w_f16(off + 2u) * f32(sm.y);
    return d * bytes4(nib) - vec4<f32>(m);
}
//@ q5_k
// Super-block of 256 (176 bytes): d, dmin (f16), 12 bytes of scales and mins as q4_k, qh[32]
// (bit j of qh[e % 32]: the fifth bit of sub-block j), 128 bytes of nibbles as q4_k.
// Value = d * sc * q - dmin * m.
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 176u;
    let within = k & 255u;
    let j = within >> 5u;
    let l = within & 31u;
    let sm = k_scale_min(off + 4u, j);
    let q = w[(off + 48u + 32u * (j >> 1u) + l) >> 2u];
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, (j & 1u) == 1u);
    let hb = (w[(off + 16u + l) >> 2u] >> j) & 0x01010101u;
    let d = w_f16(off) * f32(sm.x);
    let m = w_f16(off + 2u) * f32(sm.y);
    return d * bytes4(nib | (hb << 4u)) - vec4<f32>(m);
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
//@ iq4_xs
// Super-block of 256 (136 bytes): d (f16), scales_h (u16: high 2 bits of 8 6-bit scales),
// scales_l[4] (low nibbles), 8 x 16 bytes of nibbles as q4_0, indices into KVALUES.
// Value = d * (scale - 32) * KVALUES[q].
fn load4(rb: u32, k: u32, kmax: u32) -> vec4<f32> {
    let off = rb + (k >> 8u) * 136u;
    let within = k & 255u;
    let ib = within >> 5u;
    let l = within & 31u;
    let q = w[(off + 8u + 16u * ib + (l & 15u)) >> 2u];
    let nib = select(q & 0x0f0f0f0fu, (q >> 4u) & 0x0f0f0f0fu, l >= 16u);
    let ls = ((w_byte(off + 4u + (ib >> 1u)) >> (4u * (ib & 1u))) & 15u)
        | (((w[off >> 2u] >> (16u + 2u * ib)) & 3u) << 4u);
    return (w_f16(off) * (f32(ls) - 32.0)) * kvalues4(nib);
}
