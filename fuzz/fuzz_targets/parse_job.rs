//! `switchyard::job::parse_job` on any bytes. Input: the subject, a newline, the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::job::{parse_job, parse_job_checked, ParseRules};

fuzz_target!(|data: &[u8]| {
    let (subject, payload) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 1..]),
        None => ("llm.jobs.normal.acme".into(), data),
    };
    let rules = ParseRules {
        prefix: "llm".into(),
        max_payload_bytes: 64 * 1024,
        max_messages: 16,
        max_tokens_cap: 32_768,
        providers: vec!["openai".into(), "anthropic".into(), "gemini".into()],
        reply_to: switchyard::job::ReplyToRules::any(),
    };
    let seq = data.len() as u64;
    let checked = parse_job_checked(payload, &subject, seq, &rules);
    match parse_job(payload, &subject, seq, &rules) {
        Ok(p) => {
            // The fast path accepts only what the long way accepts, as the same job.
            let c = checked.expect("the fast path accepted what the long way refuses");
            assert_eq!(c.job, p.job);
            assert_eq!(c.envelope, p.envelope);
            assert_eq!(p.envelope.tenant, p.job.tenant);
            assert_eq!(p.envelope.id, p.job.id);
        }
        Err(f) => {
            assert!(!f.error.message.is_empty());
            assert_eq!(checked.err().map(|c| c.error), Some(f.error));
        }
    }
});
