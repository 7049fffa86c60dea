//! Token counts before a call, for context-window checks, rate limits and cost caps.
//!
//! Two ways, by cost:
//! - [`estimate_input_tokens`]: an approximation, ~4 characters per token (OpenAI's rule
//!   of thumb for English), 4 tokens of framing per message, plus the tool definitions'
//!   JSON. Microseconds per job; used for rate limits and budget reservations, and for
//!   every provider without a public tokenizer (Anthropic, Gemini, self-hosted). It errs
//!   high for English (by ~40% against `o200k_base`), the safe side for limits.
//! - [`openai_input_tokens`]: the real count with OpenAI's tokenizer (`o200k_base` for
//!   the gpt-4o / gpt-4.1 / o-series / gpt-5 families, `cl100k_base` for older gpt-4 and
//!   gpt-3.5), with OpenAI's chat framing (3 tokens per message, 3 to prime the reply).
//!   The router uses it for an OpenAI model whenever the approximation puts the job within
//!   25% of that model's context window, where the difference decides the route.
//!
//! Providers report the real counts afterwards; cost is computed from those.

use crate::job::Job;
use std::sync::atomic::{AtomicBool, Ordering};
use tiktoken_rs::CoreBPE;

pub fn estimate_input_tokens(job: &Job) -> u64 {
    let mut chars: usize = 0;
    let mut framing: u64 = 3;
    for m in &job.messages {
        chars += m.char_len();
        framing += 4;
    }
    chars += tools_len(job);
    framing += 8 * job.tools.as_ref().map_or(0, |t| t.len() as u64);
    (chars as u64).div_ceil(4) + framing
}

fn tools_len(job: &Job) -> usize {
    job.tools
        .iter()
        .flatten()
        .map(|t| {
            t.function.name.len()
                + t.function.description.as_ref().map_or(0, String::len)
                + t.function
                    .parameters
                    .as_ref()
                    .map_or(0, |p| p.to_string().len())
        })
        .sum()
}

/// Built encodings, by [`legacy`]: o200k (false), cl100k (true).
static READY: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
static BUILDING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Can `upstream`'s input be counted exactly now, without building its encoding (~30 MB
/// of tables, ~0.1 s of CPU) inside the caller? When not, the build starts on a thread of
/// its own and the caller uses [`openai_input_tokens_bound`] meanwhile. The tables are
/// built only once a count is wanted (a budget half used), not at start: a worker whose
/// budgets stay low never holds them.
pub fn exact_ready(upstream: &str) -> bool {
    let i = usize::from(legacy(upstream));
    if READY[i].load(Ordering::Acquire) {
        return true;
    }
    if !BUILDING[i].swap(true, Ordering::AcqRel) {
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            encoding_for(&upstream);
            READY[i].store(true, Ordering::Release);
        });
    }
    false
}

/// OpenAI's older models (GPT-4, GPT-3.5) use cl100k; the rest o200k.
fn legacy(upstream: &str) -> bool {
    let m = upstream.rsplit('/').next().unwrap_or(upstream);
    (m.starts_with("gpt-4") && !m.starts_with("gpt-4o") && !m.starts_with("gpt-4.1"))
        || m.starts_with("gpt-3.5")
}

fn encoding_for(upstream: &str) -> &'static CoreBPE {
    if legacy(upstream) {
        tiktoken_rs::cl100k_base_singleton()
    } else {
        tiktoken_rs::o200k_base_singleton()
    }
}

/// An upper bound of [`openai_input_tokens`] that costs next to nothing: OpenAI's
/// encodings are byte-level BPE, every token at least one byte, so a text has at most as
/// many tokens as bytes. Over-counts about four times for English.
pub fn openai_input_tokens_bound(job: &Job) -> u64 {
    openai_count(job, |s| s.len() as u64)
}

/// The input tokens OpenAI will count for `job` on `upstream` (its model id).
pub fn openai_input_tokens(job: &Job, upstream: &str) -> u64 {
    let bpe = encoding_for(upstream);
    openai_count(job, |s| bpe.count_ordinary(s) as u64)
}

/// OpenAI's chat framing over `job`, each text counted by `count` (the tokenizer, or a
/// bound): 3 tokens to prime the reply, 3 per message, 1 per name, 3 per tool call, 8
/// per tool definition.
fn openai_count(job: &Job, count: impl Fn(&str) -> u64) -> u64 {
    let mut n: u64 = 3;
    for m in &job.messages {
        n += 3 + count(&m.text());
        if let Some(name) = &m.name {
            n += 1 + count(name);
        }
        for call in m.tool_calls.iter().flatten() {
            n += count(&call.function.name) + count(&call.function.arguments) + 3;
        }
        n += m.char_len().saturating_sub(m.text().len()) as u64 / 4; // images: 85 tokens each
    }
    for t in job.tools.iter().flatten() {
        n += 8 + count(&t.function.name);
        if let Some(d) = &t.function.description {
            n += count(d);
        }
        if let Some(p) = &t.function.parameters {
            n += count(&p.to_string());
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{parse_job, ParseRules};

    fn job(content: &str) -> Job {
        let payload = serde_json::json!({"id": "j", "tenant": "t", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": content}]});
        let rules = ParseRules {
            prefix: "llm".into(),
            max_payload_bytes: 1 << 20,
            max_messages: 10,
            max_tokens_cap: 1000,
            providers: vec![],
            reply_to: crate::job::ReplyToRules::any(),
        };
        parse_job(payload.to_string().as_bytes(), "llm.jobs.low.t", 1, &rules)
            .unwrap()
            .job
    }

    #[test]
    fn openai_counts_are_exact_for_known_strings() {
        // "hello world" is 2 tokens in both encodings; framing: 3 + 2 × 3.
        let j = job("hello world");
        let system = tiktoken_rs::o200k_base_singleton()
            .count_ordinary("You are a helpful assistant.") as u64;
        assert_eq!(
            openai_input_tokens(&j, "gpt-4o-mini-2024-07-18"),
            3 + 3 + system + 3 + 2
        );
        let system = tiktoken_rs::cl100k_base_singleton()
            .count_ordinary("You are a helpful assistant.") as u64;
        assert_eq!(
            openai_input_tokens(&j, "gpt-4-0613"),
            3 + 3 + system + 3 + 2
        );
    }

    #[test]
    fn the_approximation_is_in_the_right_range_for_english() {
        let text = "The quarterly report shows that revenue grew in every region, while costs \
                    fell slightly because the new supplier contracts took effect in March. "
            .repeat(40);
        let j = job(&text);
        let exact = openai_input_tokens(&j, "gpt-4o") as f64;
        let approx = estimate_input_tokens(&j) as f64;
        // It errs high (o200k packs English at ~5 characters a token), which is the safe
        // side for limits and reservations; never far below the real count.
        let ratio = approx / exact;
        assert!(
            (1.0..1.6).contains(&ratio),
            "approx {approx} vs exact {exact}"
        );
    }

    #[test]
    fn the_byte_bound_is_never_below_the_exact_count() {
        let texts = [
            "hello world".to_string(),
            "Ünïcödé — 漢字かな交じり文 🙂🙂🙂 emoji and accents".repeat(7),
            "x".repeat(5000),
            "    indented\n\tcode();\n".repeat(50),
            "a1 b2 c3 ".repeat(300),
        ];
        for t in texts {
            let j = job(&t);
            let bound = openai_input_tokens_bound(&j);
            for upstream in ["gpt-4o-mini-2024-07-18", "gpt-4-0613"] {
                let exact = openai_input_tokens(&j, upstream);
                assert!(
                    bound >= exact,
                    "{upstream}: bound {bound} < exact {exact} for {t:.40}"
                );
            }
        }
    }

    #[test]
    fn an_encoding_is_built_off_the_caller_and_then_ready() {
        let upstream = "gpt-4o-mini-2024-07-18";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !exact_ready(upstream) {
            assert!(std::time::Instant::now() < deadline, "o200k never built");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(exact_ready(upstream));
        assert!(legacy("gpt-4-0613") && !legacy("openai/gpt-4o") && !legacy("gpt-4.1-nano"));
    }
}
