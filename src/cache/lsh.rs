//! Locality-sensitive hashing for the semantic cache: how a vector is stored and how its
//! near neighbours are found in Postgres with an ordinary index (no pgvector).
//!
//! - A vector is stored quantised to one signed byte per dimension (scaled so its largest
//!   value is ±127): a quarter of `f32`'s size, and the cosine of two quantised vectors
//!   differs from the exact one by well under 0.01.
//! - Its signature is [`BANDS`] × [`BITS`] random-hyperplane bits (the sign of its dot
//!   product with a fixed pseudo-random ±1 vector per bit, see [`signature`]): two
//!   vectors at angle θ agree on each bit with probability about 1 − θ/π. Each band of [`BITS`] bits, hashed with the
//!   tenant and the request's shape (`crate::cache::semantic`), is one `bigint` in the
//!   entry's `bands` array, under a GIN index: a lookup reads the entries that share at
//!   least one band with the prompt (`bands && $1`) and computes their exact cosine.
//! - At cosine 0.92 (θ = 23°) a bit agrees with p = 0.872, a band with p¹⁶ = 0.11, and at
//!   least one of 24 bands with 0.94; at 0.95, 0.99. Two unrelated vectors share a given
//!   band with 2⁻¹⁶: a million entries put ~370 unrelated candidates in a lookup.
//!   Measured recall and latency: BENCHMARKS.md "Cost levers".

/// Bands per signature.
pub const BANDS: usize = 24;
/// Bits per band.
pub const BITS: usize = 16;

/// A vector as stored: one signed byte per dimension.
pub fn quantize(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return vec![0; v.len()];
    }
    v.iter()
        .map(|x| (x / max * 127.0).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// The cosine of two quantised vectors (0 when either is all zeros or the lengths differ).
pub fn cosine_i8(a: &[i8], b: &[i8]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0i64, 0i64, 0i64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (i64::from(x), i64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0 || nb == 0 {
        return 0.0;
    }
    (dot as f64 / ((na as f64).sqrt() * (nb as f64).sqrt())) as f32
}

/// The stored bytes of a quantised vector.
pub fn to_bytes(q: &[i8]) -> Vec<u8> {
    q.iter().map(|&x| x as u8).collect()
}

pub fn from_bytes(b: &[u8]) -> Vec<i8> {
    b.iter().map(|&x| x as i8).collect()
}

/// The signature of a quantised vector: [`BANDS`] bands of [`BITS`] bits, each the sign
/// of the vector's dot product with a ±1 hyperplane. The hyperplanes are the rows of a
/// Walsh-Hadamard matrix times a pseudo-random diagonal of signs (a fixed seed per
/// round, the same for every worker and build), so a round of `n` bits (the vector
/// padded to a power of two) costs n·log₂n additions instead of n² multiplications; the
/// rows are orthogonal, which only lowers the variance of the agreement.
pub fn signature(q: &[i8]) -> [u16; BANDS] {
    let n = q.len().next_power_of_two().max(16);
    let mut bits = Vec::with_capacity(BANDS * BITS + n);
    let mut x = vec![0i32; n];
    let mut round = 0u64;
    while bits.len() < BANDS * BITS {
        let mut state = splitmix(0x5EED ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for (i, slot) in x.iter_mut().enumerate() {
            if i % 64 == 0 {
                state = splitmix(state);
            }
            let v = q.get(i).map_or(0, |&v| i32::from(v));
            *slot = if state >> (i % 64) & 1 == 1 { v } else { -v };
        }
        hadamard(&mut x);
        bits.extend(x.iter().map(|&v| v >= 0));
        round += 1;
    }
    let mut sig = [0u16; BANDS];
    for (band, slot) in sig.iter_mut().enumerate() {
        for bit in 0..BITS {
            if bits.get(band * BITS + bit).copied().unwrap_or(false) {
                *slot |= 1 << bit;
            }
        }
    }
    sig
}

/// The fast Walsh-Hadamard transform, in place (`x.len()` a power of two).
fn hadamard(x: &mut [i32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (s, d) = (*a + *b, *a - *b);
                *a = s;
                *b = d;
            }
        }
        h *= 2;
    }
}

/// The index keys of a signature: each band hashed with `scope` (the tenant and the
/// request's shape), so entries of another tenant or another request never share one.
pub fn band_keys(scope: u64, sig: &[u16; BANDS]) -> Vec<i64> {
    sig.iter()
        .enumerate()
        .map(|(band, &bits)| {
            let x =
                scope ^ ((band as u64) << 16 | u64::from(bits)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
            splitmix(x) as i64
        })
        .collect()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::embed::{builtin, cosine, BUILTIN_DIMS};

    #[test]
    fn quantised_cosine_is_close_to_the_exact_one() {
        let a = builtin(
            "Summarise this contract in three bullet points",
            BUILTIN_DIMS,
        );
        let b = builtin("Summarize the contract as three bullets", BUILTIN_DIMS);
        let exact = cosine(&a, &b);
        let q = cosine_i8(&quantize(&a), &quantize(&b));
        assert!((exact - q).abs() < 0.01, "{exact} vs {q}");
        assert_eq!(from_bytes(&to_bytes(&quantize(&a))), quantize(&a));
    }

    #[test]
    fn equal_vectors_share_every_band_and_scopes_separate_them() {
        let q = quantize(&builtin("hello there world", BUILTIN_DIMS));
        let s = signature(&q);
        assert_eq!(band_keys(1, &s), band_keys(1, &signature(&q)));
        let other: std::collections::HashSet<i64> = band_keys(2, &s).into_iter().collect();
        assert!(band_keys(1, &s).iter().all(|k| !other.contains(k)));
        // An unrelated vector shares (almost) no band.
        let r = quantize(&builtin(
            "an entirely different question on tax",
            BUILTIN_DIMS,
        ));
        let shared = signature(&r).iter().zip(&s).filter(|(a, b)| a == b).count();
        assert!(shared <= 1, "{shared}");
    }
}
