//! Deterministic content for simulated answers: English-ish text, JSON that matches a
//! schema, tool-call arguments, and the token estimates shared by every API.
//!
//! Token approximation (all APIs): `prompt_tokens = ceil(chars / 4) + 3 × messages`, where
//! `chars` counts the characters (not bytes) of every text the model reads: message text
//! (strings and text parts/blocks), the system prompt, tool-call names and arguments,
//! tool results, and the JSON of tool definitions and response schemas; each image (or
//! other media part) adds a flat 85 tokens (258 at Gemini). A generated text answer costs
//! one token per word; a JSON answer or tool-call arguments cost `ceil(chars / 4)`.
//! Reasoning models add their reasoning/thinking tokens to the output.

use serde_json::{json, Value};

pub(crate) use super::schema::{tool_args, value_for_schema};

/// FNV-1a, 64 bit: fast, stable across runs and platforms.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Seed from a JSON value (the request's messages) plus a salt (e.g. the choice index).
pub(crate) fn seed_of(value: &Value, salt: u64) -> u64 {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    fnv1a(&bytes) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// SplitMix64: a tiny deterministic generator.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub(crate) fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        let i = self.below(words.len() as u64) as usize;
        words.get(i).copied().unwrap_or("data")
    }
}

/// A random (non-deterministic) id: `prefix` + `len` alphanumeric characters.
pub(crate) fn random_id(prefix: &str, len: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    s.push_str(&Alphanumeric.sample_string(&mut rand::rng(), len));
    s
}

/// `ceil(chars / 4) + 3 × messages`.
pub(crate) fn estimate_tokens(chars: usize, messages: usize) -> u64 {
    (chars as u64).div_ceil(4) + 3 * messages as u64
}

/// Tokens of generated JSON or arguments: `ceil(chars / 4)`, at least 1.
pub(crate) fn json_tokens(s: &str) -> u64 {
    (s.chars().count() as u64).div_ceil(4).max(1)
}

/// Prompt-cache reads: 0 below 1024 prompt tokens, else half the prompt rounded down
/// to a multiple of 128 (like OpenAI's automatic prompt caching).
pub(crate) fn cached_tokens(prompt_tokens: u64) -> u64 {
    if prompt_tokens < 1024 {
        0
    } else {
        prompt_tokens / 2 / 128 * 128
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The answer was complete.
    Stop,
    /// The token limit cut it.
    Length,
    /// A stop sequence (not included in the text) ended it.
    StopSequence(String),
}

/// A generated answer.
#[derive(Clone, Debug)]
pub(crate) struct Generated {
    pub text: String,
    pub tokens: u64,
    pub finish: Finish,
}

const DET: &[&str] = &["the", "a", "this", "each", "every", "our", "their", "that"];
pub(super) const ADJ: &[&str] = &[
    "quarterly",
    "reliable",
    "detailed",
    "primary",
    "regional",
    "efficient",
    "complex",
    "simple",
    "final",
    "initial",
    "modern",
    "key",
    "broad",
    "steady",
    "clear",
    "careful",
    "recent",
    "typical",
    "robust",
    "minor",
    "major",
    "overall",
    "practical",
    "relevant",
];
pub(super) const NOUN: &[&str] = &[
    "report", "system", "process", "customer", "team", "result", "market", "contract", "document",
    "analysis", "model", "review", "update", "budget", "schedule", "request", "policy", "service",
    "product", "project", "metric", "summary", "section", "decision", "response", "record",
    "value", "account", "region", "network", "supplier", "invoice",
];
const VERB: &[&str] = &[
    "indicates",
    "supports",
    "requires",
    "describes",
    "improves",
    "includes",
    "confirms",
    "reduces",
    "highlights",
    "reflects",
    "outlines",
    "covers",
    "explains",
    "tracks",
    "follows",
    "suggests",
    "shows",
    "provides",
    "affects",
    "matches",
];
const PREP: &[&str] = &[
    "across", "within", "for", "during", "after", "with", "under", "before", "between",
];
const ADV: &[&str] = &[
    "clearly",
    "usually",
    "already",
    "largely",
    "mostly",
    "carefully",
    "quickly",
    "generally",
    "often",
    "currently",
];
const CONJ: &[&str] = &["and", "while", "because", "although", "so"];

#[derive(Clone, Copy)]
enum Pos {
    D,
    A,
    N,
    V,
    P,
    R,
    C,
}

const TEMPLATES: &[&[Pos]] = {
    use Pos::*;
    &[
        &[D, A, N, V, D, A, N],
        &[D, N, R, V, D, N, P, D, N],
        &[D, A, N, V, D, N, C, D, N, V, D, A, N],
        &[P, D, A, N, D, N, V, D, N],
        &[D, N, V, D, A, N, P, D, N],
        &[D, A, N, R, V, D, N],
    ]
};

fn sentence(rng: &mut Rng) -> Vec<String> {
    let t = TEMPLATES
        .get(rng.below(TEMPLATES.len() as u64) as usize)
        .copied()
        .unwrap_or(&[Pos::D, Pos::N, Pos::V]);
    let mut words: Vec<String> = t
        .iter()
        .map(|p| {
            let list = match p {
                Pos::D => DET,
                Pos::A => ADJ,
                Pos::N => NOUN,
                Pos::V => VERB,
                Pos::P => PREP,
                Pos::R => ADV,
                Pos::C => CONJ,
            };
            rng.pick(list).to_owned()
        })
        .collect();
    if let Some(first) = words.first_mut() {
        let mut c = first.chars();
        if let Some(f) = c.next() {
            *first = f.to_uppercase().chain(c).collect();
        }
    }
    if let Some(last) = words.last_mut() {
        last.push('.');
    }
    words
}

/// English-ish text derived from `seed`: 24..120 words in whole sentences, paragraphs of
/// three sentences separated by a blank line. At most `limit` words (then
/// [`Finish::Length`]); cut before the earliest of `stops` (then [`Finish::StopSequence`]).
pub(crate) fn generate_text(seed: u64, limit: Option<u64>, stops: &[String]) -> Generated {
    let mut rng = Rng::new(seed);
    let target = 24 + rng.below(96);
    let mut text = String::new();
    let mut words = 0u64;
    let mut sentences = 0u64;
    let mut finish = Finish::Stop;
    'outer: while words < target {
        let s = sentence(&mut rng);
        if sentences > 0 {
            text.push_str(if sentences % 3 == 0 { "\n\n" } else { " " });
        }
        sentences += 1;
        for (i, w) in s.iter().enumerate() {
            if limit.is_some_and(|l| words >= l) {
                finish = Finish::Length;
                break 'outer;
            }
            if i > 0 {
                text.push(' ');
            }
            text.push_str(w);
            words += 1;
        }
    }
    let text = text.trim_end().to_owned();
    if let Some((idx, stop)) = earliest_stop(&text, stops) {
        let cut = text.get(..idx).unwrap_or("").to_owned();
        let tokens = cut.split_whitespace().count() as u64;
        return Generated {
            text: cut,
            tokens,
            finish: Finish::StopSequence(stop),
        };
    }
    Generated {
        tokens: words,
        text,
        finish,
    }
}

fn earliest_stop(text: &str, stops: &[String]) -> Option<(usize, String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|i| (i, s.clone())))
        .min_by_key(|(i, _)| *i)
}

/// Cut serialized JSON to `limit` tokens (4 characters each), like a model that ran out
/// of tokens mid-object. Returns the text, its tokens and whether it was cut.
pub(crate) fn limit_json(s: String, limit: Option<u64>) -> (String, u64, bool) {
    let tokens = json_tokens(&s);
    match limit {
        Some(l) if tokens > l => {
            let cut: String = s.chars().take((l * 4) as usize).collect();
            (cut, l, true)
        }
        _ => (s, tokens, false),
    }
}

/// A plausible free-form JSON object (json_object mode).
pub(crate) fn json_object(seed: u64) -> Value {
    let mut rng = Rng::new(seed);
    let answer = sentence(&mut rng).join(" ");
    let confidence = 50 + rng.below(50);
    json!({
        "answer": answer,
        "confidence": confidence as f64 / 100.0,
        "keywords": [rng.pick(NOUN), rng.pick(NOUN), rng.pick(ADJ)],
    })
}

/// Whether `text` mentions the tool `name` as a whole word (case-insensitive).
pub(crate) fn mentions(text: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let hay = text.to_ascii_lowercase();
    let needle = name.to_ascii_lowercase();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut from = 0;
    while let Some(pos) = hay.get(from..).and_then(|h| h.find(&needle)) {
        let start = from + pos;
        let end = start + needle.len();
        let before_ok = hay
            .get(..start)
            .and_then(|h| h.chars().last())
            .is_none_or(|c| !is_word(c));
        let after_ok = hay
            .get(end..)
            .and_then(|h| h.chars().next())
            .is_none_or(|c| !is_word(c));
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_is_deterministic_and_counts_words() {
        let a = generate_text(42, None, &[]);
        let b = generate_text(42, None, &[]);
        assert_eq!(a.text, b.text);
        assert_eq!(a.finish, Finish::Stop);
        assert_eq!(a.tokens, a.text.split_whitespace().count() as u64);
        assert!((24..140).contains(&a.tokens), "{}", a.tokens);
        assert!(a.text.ends_with('.'));
        assert_ne!(generate_text(43, None, &[]).text, a.text);
    }

    #[test]
    fn text_limit_and_stop_sequences() {
        let cut = generate_text(7, Some(5), &[]);
        assert_eq!(cut.tokens, 5);
        assert_eq!(cut.text.split_whitespace().count(), 5);
        assert_eq!(cut.finish, Finish::Length);
        // Long texts have paragraph breaks, so "\n\n" stops them.
        let full = (0..50)
            .map(|s| generate_text(s, None, &[]))
            .find(|g| g.text.contains("\n\n"))
            .expect("some text has paragraphs");
        let seed = (0..50)
            .find(|s| generate_text(*s, None, &[]).text == full.text)
            .expect("seed");
        let stopped = generate_text(seed, None, &["\n\n".to_owned()]);
        assert_eq!(stopped.finish, Finish::StopSequence("\n\n".into()));
        assert!(full.text.starts_with(&stopped.text));
        assert!(!stopped.text.contains("\n\n"));
        assert_eq!(
            stopped.tokens,
            stopped.text.split_whitespace().count() as u64
        );
    }

    #[test]
    fn estimates() {
        assert_eq!(estimate_tokens(5, 1), 5);
        assert_eq!(estimate_tokens(8, 2), 8);
        assert_eq!(cached_tokens(1023), 0);
        assert_eq!(cached_tokens(1024), 512);
        assert_eq!(cached_tokens(3000), 1408);
        assert_eq!(json_tokens("abcde"), 2);
        let (s, t, cut) = limit_json("x".repeat(40), Some(3));
        assert_eq!((s.len(), t, cut), (12, 3, true));
    }

    #[test]
    fn tool_mentions() {
        assert!(mentions("Please call get_weather for Paris", "get_weather"));
        assert!(mentions("GET_WEATHER?", "get_weather"));
        assert!(!mentions("call get_weather_now", "get_weather"));
        assert!(!mentions("nothing here", "get_weather"));
    }
}
