//! Token estimates before a call, for context-window checks, rate limits and cost caps.
//!
//! An approximation: ~4 characters per token for English text (OpenAI's rule of thumb),
//! plus 4 tokens of framing per message and the tool definitions' JSON. Providers report
//! the real counts afterwards; those are what cost is computed from.

use crate::job::Job;

pub fn estimate_input_tokens(job: &Job) -> u64 {
    let mut chars: usize = 0;
    let mut framing: u64 = 3;
    for m in &job.messages {
        chars += m.char_len();
        framing += 4;
    }
    for t in job.tools.iter().flatten() {
        chars += t.function.name.len()
            + t.function.description.as_ref().map_or(0, String::len)
            + t.function
                .parameters
                .as_ref()
                .map_or(0, |p| p.to_string().len());
        framing += 8;
    }
    (chars as u64).div_ceil(4) + framing
}
