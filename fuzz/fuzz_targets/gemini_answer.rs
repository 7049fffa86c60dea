//! The gemini adapter's reading of one HTTP answer (status, headers, body): success
//! parsing, tool-call checks, error classification, rate-limit headers.
#![no_main]

#[path = "answer.rs"]
mod answer;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| answer::check(data, switchyard::providers::gemini::read_answer));
