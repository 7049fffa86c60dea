//! The built-in embedder of the semantic cache: no model, no download, no server. A
//! prompt becomes a fixed-size vector of hashed features, L2-normalised, so that the
//! cosine of two prompts measures how many (weighted) features they share:
//!
//! - words, lower-cased, with a light English stemming (`-ing`, `-ed`, `-es`, `-s`,
//!   `-ly`, British `-ise`) and the commonest function words dropped, weight 1;
//! - adjacent pairs of those words, weight 0.6: word order ("dog bites man" is not
//!   "man bites dog");
//! - character trigrams of each word (with its boundaries), weight 0.25 spread over the
//!   word's trigrams: spelling variants and inflections still share most of them;
//! - numbers as words too (but the semantic key also requires the prompt's numbers to be
//!   equal, see `crate::cache::semantic`).
//!
//! Each feature is hashed (FNV-1a, 64 bit) to a dimension and a sign (the "hashing
//! trick"). It knows no synonyms: a paraphrase that shares few words with the original
//! scores low. Its measured hit and false-hit rates are in DESIGN.md "Semantic cache".

/// The built-in embedder's size unless `cache.embeddings.dimensions` says otherwise.
pub const BUILTIN_DIMS: usize = 256;

const WORD: f32 = 1.0;
const PAIR: f32 = 0.6;
const TRIGRAMS: f32 = 0.25;

/// Function words that say little about what is asked.
const STOP: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "are", "was", "were",
    "be", "been", "it", "its", "this", "that", "these", "those", "i", "me", "my", "we", "our",
    "you", "your", "please", "could", "would", "can", "will", "do", "does", "did", "just", "some",
    "any", "s", "t", "kindly", "there", "here", "with", "about",
];

/// The built-in embedding of `text`: `dims` values, L2-normalised; all zeros when the
/// text has no word.
pub fn builtin(text: &str, dims: usize) -> Vec<f32> {
    let dims = dims.max(1);
    let mut v = vec![0f32; dims];
    let words = words(text);
    let mut add = |feature: &[u8], weight: f32| {
        let h = fnv1a(feature);
        let i = (h % dims as u64) as usize;
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        if let Some(x) = v.get_mut(i) {
            *x += sign * weight;
        }
    };
    let mut buf = Vec::with_capacity(64);
    for (n, w) in words.iter().enumerate() {
        buf.clear();
        buf.extend_from_slice(b"w:");
        buf.extend_from_slice(w.as_bytes());
        add(&buf, WORD);
        if let Some(next) = words.get(n + 1) {
            buf.clear();
            buf.extend_from_slice(b"p:");
            buf.extend_from_slice(w.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(next.as_bytes());
            add(&buf, PAIR);
        }
        let chars: Vec<char> = std::iter::once('<')
            .chain(w.chars())
            .chain(std::iter::once('>'))
            .collect();
        let grams = chars.len().saturating_sub(2).max(1);
        for g in chars.windows(3) {
            buf.clear();
            buf.extend_from_slice(b"c:");
            for c in g {
                let mut b = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
            add(&buf, TRIGRAMS / grams as f32);
        }
    }
    normalize(&mut v);
    v
}

/// The prompt's words as features see them: lower-cased runs of letters and digits,
/// stemmed, function words dropped.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

/// The numbers in `text`, in order (digit runs, with a decimal point or comma between
/// digits kept): two prompts that differ in a number ask different things.
pub fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let joins = (c == '.' || c == ',')
            && !cur.is_empty()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() || joins {
            if c != ',' {
                cur.push(c);
            }
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn stem(w: &str) -> String {
    if w.chars().any(|c| c.is_ascii_digit()) {
        return w.to_string();
    }
    let n = w.chars().count();
    for (suffix, min, with) in [
        ("ising", 6, "iz"),
        ("izing", 6, "iz"),
        ("ised", 5, "iz"),
        ("ized", 5, "iz"),
        ("ise", 5, "iz"),
        ("ize", 5, "iz"),
        ("ies", 5, "y"),
        ("ing", 6, ""),
        ("ed", 5, ""),
        ("es", 5, ""),
        ("ly", 5, ""),
        ("s", 4, ""),
    ] {
        if n >= min && w.ends_with(suffix) && !w.ends_with("ss") {
            let base = &w[..w.len() - suffix.len()];
            return format!("{base}{with}");
        }
    }
    w.to_string()
}

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Scale `v` to unit length (all zeros stays all zeros).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// The cosine of two vectors of the same length (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_are_identical_and_unrelated_ones_far() {
        let a = builtin("What is the capital of France?", BUILTIN_DIMS);
        let b = builtin("what is the capital of france", BUILTIN_DIMS);
        assert!((cosine(&a, &b) - 1.0).abs() < 1e-5);
        let c = builtin("Write a haiku about autumn leaves", BUILTIN_DIMS);
        assert!(cosine(&a, &c) < 0.3, "{}", cosine(&a, &c));
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
        assert!(builtin("?! ...", 16).iter().all(|x| *x == 0.0));
    }

    #[test]
    fn word_order_and_inflection() {
        let a = builtin("summarise the attached contract", BUILTIN_DIMS);
        let b = builtin("summarize the attached contracts", BUILTIN_DIMS);
        assert!(cosine(&a, &b) > 0.95, "{}", cosine(&a, &b));
        let x = builtin("the dog bit the man", BUILTIN_DIMS);
        let y = builtin("the man bit the dog", BUILTIN_DIMS);
        assert!(cosine(&x, &y) < 0.92, "{}", cosine(&x, &y));
    }

    #[test]
    fn numbers_are_read_in_order() {
        assert_eq!(
            numbers("Pay 1,250.50 to acct 77 by 2024-05-01."),
            ["1250.50", "77", "2024", "05", "01"]
        );
        assert!(numbers("no digits").is_empty());
    }
}
