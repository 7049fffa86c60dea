//! The classifier: from a job's shape and wording to its task and the lowest tier that
//! serves it, with a short reason. Pure and allocation-free (the reason is rendered by
//! the caller), so that classify + route stays within a few microseconds.
//!
//! Signals, strongest first: the job's `task` hint; its `feature` name; a JSON
//! `response_format`; instruction words in the system prompt and the head and tail of
//! the last user message (classify / extract / summarise / translate / step by step /
//! prove …); code (fences, stack traces, symbol density, language names); tools. The tier
//! then follows from the task and its difficulty: input length, conversation depth,
//! tools, images, schema strictness. See [`required_tier`] for the table.

use crate::config::Tier;
use crate::job::{Content, ContentPart, Job, Message, ResponseFormat, Role, Task};

/// What the classifier decided, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub task: Task,
    /// The lowest tier that serves the job well.
    pub tier: Tier,
    /// What decided the task (`"json response_format"`, `"feature"`, `"words"` …).
    pub signal: &'static str,
    /// What raised the tier above the task's base tier, or `""`.
    pub bump: &'static str,
    /// A translation (reported as `generation`).
    pub translation: bool,
}

// Word flags found by the scan.
const SUMMARIZE: u32 = 1 << 0;
const TRANSLATE: u32 = 1 << 1;
const CLASSIFY: u32 = 1 << 2;
const EXTRACT: u32 = 1 << 3;
const CODE_MARK: u32 = 1 << 4; // a fence, a stack trace, an exception name
const CODE_HARD: u32 = 1 << 5; // refactor, debug, race, deadlock …
const PROVE: u32 = 1 << 6;
const STEP_BY_STEP: u32 = 1 << 7;
const MATH: u32 = 1 << 8;
const PLAN: u32 = 1 << 9; // plan, strategy, trade-offs, architecture …
const CODE_VERB: u32 = 1 << 10; // write, implement, fix …
const LONGFORM: u32 = 1 << 11;
const JSON_WORD: u32 = 1 << 12;
const CODE_FEATURE: u32 = 1 << 13; // "code" as a word: only meaningful in a feature name
const TRACE: u32 = 1 << 14; // a stack trace or crash report: debugging

/// What one scan of some text found.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    flags: u32,
    code_words: u32,
    plan_words: u32,
    symbols: u32,
    bytes: u32,
}

impl Scan {
    fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }
    fn looks_like_code(&self) -> bool {
        self.has(CODE_MARK | TRACE)
            || self.code_words >= 2
            || (self.code_words >= 1 && self.has(CODE_VERB | CODE_HARD))
            // braces, semicolons, parentheses and `=` dense enough to be source text
            || (self.bytes >= 120 && self.symbols * 100 >= self.bytes * 6)
    }
}

/// How much of each text is read: instructions sit at the start of a system prompt and at
/// the start or end of the last user message, and scanning a whole long document would
/// cost more than routing it.
const SYSTEM_WINDOW: usize = 1024;
const HEAD_WINDOW: usize = 640;
const TAIL_WINDOW: usize = 384;

/// The task and lowest serving tier of `job`, whose input is about `tokens` tokens.
pub fn classify(job: &Job, tokens: u64) -> Classification {
    let mut scan = Scan::default();
    let mut depth = Depth::default();
    let mut last_user: Option<&Message> = None;
    for m in &job.messages {
        match m.role {
            Role::System => for_text(m, |t| scan_text(head(t, SYSTEM_WINDOW), &mut scan)),
            Role::User => {
                depth.user_turns += 1;
                last_user = Some(m);
            }
            Role::Assistant => depth.tool_calls += m.tool_calls.as_ref().map_or(0, |c| c.len()),
            Role::Tool => depth.tool_results += 1,
        }
        if let Some(Content::Parts(parts)) = &m.content {
            depth.images |= parts
                .iter()
                .any(|p| matches!(p, ContentPart::ImageUrl { .. }));
        }
    }
    if let Some(m) = last_user {
        for_text(m, |t| {
            let h = head(t, HEAD_WINDOW);
            scan_text(h, &mut scan);
            if t.len() > h.len() {
                scan_text(tail(&t[h.len()..], TAIL_WINDOW), &mut scan);
            }
        });
    }
    let json = match &job.response_format {
        Some(ResponseFormat::JsonObject) => Some(false),
        Some(ResponseFormat::JsonSchema { .. }) => Some(true),
        _ => None,
    };
    let tools = job.tools.as_ref().map_or(0, Vec::len);

    let (task, signal, translation) = if job.task != Task::Auto {
        (job.task, "task hint", false)
    } else if let Some((t, tr)) = job.feature.as_deref().and_then(feature_task) {
        (t, "feature", tr)
    } else if json.is_some() {
        let t = if scan.has(CLASSIFY) {
            Task::Classification
        } else {
            Task::Extraction
        };
        (t, "json response_format", false)
    } else {
        words_task(&scan, tools)
    };

    let (tier, bump) = required_tier(task, translation, &scan, &depth, json, tools, tokens);
    let translation = translation || (task == Task::Generation && scan.has(TRANSLATE));
    Classification {
        task,
        tier,
        signal,
        bump,
        translation,
    }
}

#[derive(Debug, Default)]
struct Depth {
    user_turns: u32,
    tool_calls: usize,
    tool_results: u32,
    images: bool,
}

/// The task from the words of the instructions (the job gave no hint, feature or format).
fn words_task(scan: &Scan, tools: usize) -> (Task, &'static str, bool) {
    if scan.has(CLASSIFY) {
        (Task::Classification, "words", false)
    } else if scan.has(EXTRACT) {
        (Task::Extraction, "words", false)
    } else if scan.has(CODE_MARK | TRACE) {
        (Task::Code, "code", false)
    } else if scan.has(TRANSLATE) {
        (Task::Generation, "translate", true)
    } else if scan.has(SUMMARIZE) {
        (Task::Summarization, "words", false)
    } else if scan.has(PROVE) {
        (Task::Reasoning, "words", false)
    } else if scan.looks_like_code() {
        (Task::Code, "code", false)
    } else if scan.has(STEP_BY_STEP | MATH) || scan.plan_words >= 2 {
        (Task::Reasoning, "words", false)
    } else if scan.has(JSON_WORD) {
        (Task::Extraction, "words", false)
    } else if tools > 0 {
        (Task::Generation, "tools", false)
    } else {
        (Task::Generation, "default", false)
    }
}

/// A feature name's task (`contract-extraction`, `ticket-triage`, `doc-summaries` …).
fn feature_task(feature: &str) -> Option<(Task, bool)> {
    let mut s = Scan::default();
    scan_text(feature, &mut s);
    if s.has(CLASSIFY) {
        Some((Task::Classification, false))
    } else if s.has(EXTRACT) {
        Some((Task::Extraction, false))
    } else if s.has(SUMMARIZE) {
        Some((Task::Summarization, false))
    } else if s.has(TRANSLATE) {
        Some((Task::Generation, true))
    } else if s.has(CODE_FEATURE) || s.code_words > 0 {
        Some((Task::Code, false))
    } else if s.has(PROVE | PLAN | MATH) {
        Some((Task::Reasoning, false))
    } else {
        None
    }
}

/// The lowest tier that serves `task` at this difficulty, and what raised it.
///
/// | task | base | moved by |
/// |---|---|---|
/// | classification | cheap | |
/// | extraction | cheap | a strict `json_schema`, or more than 1,000 tokens → fast |
/// | summarization | cheap | more than 1,000 tokens → fast |
/// | generation | fast | a short one-turn prompt (< 20 tokens) or translation (< 80) → cheap |
/// | code | fast | stack traces, debugging, review, concurrency, > 800 tokens → balanced |
/// | reasoning | balanced | proofs → premium; a short word problem (< 80 tokens, no planning words) → fast |
///
/// Then for every task: tools, images, 4+ user turns or more than 12,000 tokens → at
/// least fast; 4+ tools or 2+ rounds of tool results → at least balanced.
fn required_tier(
    task: Task,
    translation: bool,
    s: &Scan,
    d: &Depth,
    json: Option<bool>,
    tools: usize,
    tokens: u64,
) -> (Tier, &'static str) {
    let (mut tier, mut bump) = match task {
        Task::Classification | Task::Auto => (Tier::Cheap, ""),
        Task::Extraction if json == Some(true) => (Tier::Fast, "strict schema"),
        Task::Extraction if tokens > 1000 => (Tier::Fast, "long input"),
        Task::Extraction => (Tier::Cheap, ""),
        Task::Summarization if tokens > 1000 => (Tier::Fast, "long input"),
        Task::Summarization => (Tier::Cheap, ""),
        Task::Generation if translation || s.has(TRANSLATE) => {
            if tokens < 80 {
                (Tier::Cheap, "")
            } else {
                (Tier::Fast, "")
            }
        }
        Task::Generation if tokens < 20 && d.user_turns <= 1 && tools == 0 && !s.has(LONGFORM) => {
            (Tier::Cheap, "short prompt")
        }
        Task::Generation => (Tier::Fast, ""),
        Task::Code if s.has(TRACE) => (Tier::Balanced, "stack trace"),
        Task::Code if s.has(CODE_HARD) => (Tier::Balanced, "debugging or design"),
        Task::Code if tokens > 800 => (Tier::Balanced, "long input"),
        Task::Code => (Tier::Fast, ""),
        Task::Reasoning if s.has(PROVE) => (Tier::Premium, "proof"),
        Task::Reasoning if !s.has(PLAN) && tokens < 80 => (Tier::Fast, "short problem"),
        Task::Reasoning => (Tier::Balanced, ""),
    };
    let mut at_least = |t: Tier, why: &'static str| {
        if tier < t {
            tier = t;
            bump = why;
        }
    };
    if tools >= 4 || d.tool_results >= 2 {
        at_least(Tier::Balanced, "agentic tool use");
    } else if tools > 0 || d.tool_calls > 0 {
        at_least(Tier::Fast, "tools");
    }
    if d.images {
        at_least(Tier::Fast, "images");
    }
    if d.user_turns >= 4 {
        at_least(Tier::Fast, "conversation depth");
    }
    if tokens > 12_000 {
        at_least(Tier::Fast, "long input");
    }
    (tier, bump)
}

/// Calls `f` with each text piece of `m` (its string, or each text part), no copies.
fn for_text<'a>(m: &'a Message, mut f: impl FnMut(&'a str)) {
    match &m.content {
        Some(Content::Text(t)) => f(t),
        Some(Content::Parts(parts)) => {
            for p in parts {
                if let ContentPart::Text { text } = p {
                    f(text);
                }
            }
        }
        None => {}
    }
}

fn head(t: &str, n: usize) -> &str {
    if t.len() <= n {
        return t;
    }
    let mut i = n;
    while !t.is_char_boundary(i) {
        i -= 1;
    }
    &t[..i]
}

fn tail(t: &str, n: usize) -> &str {
    if t.len() <= n {
        return t;
    }
    let mut i = t.len() - n;
    while !t.is_char_boundary(i) {
        i += 1;
    }
    &t[i..]
}

const WORD_MAX: usize = 24;

/// One pass over `t`: words (ASCII letters, lower-cased into a stack buffer) against
/// the keyword table, plus code punctuation and fences.
fn scan_text(t: &str, s: &mut Scan) {
    let mut buf = [0u8; WORD_MAX];
    let mut len = 0usize;
    let mut camel = false;
    let mut prev_lower = false;
    let mut backticks = 0u8;
    let mut prev_digit = false;
    // "step by step": 1 after "step", 2 after "step by"
    let mut step = 0u8;
    s.bytes = s.bytes.saturating_add(t.len() as u32);
    for &b in t.as_bytes().iter().chain(std::iter::once(&b' ')) {
        if b.is_ascii_alphabetic() {
            if len < WORD_MAX {
                buf[len] = b.to_ascii_lowercase();
            }
            len += 1;
            camel |= prev_lower && b.is_ascii_uppercase();
            prev_digit = false;
            prev_lower = b.is_ascii_lowercase();
            continue;
        }
        if len > 0 {
            let w = &buf[..len.min(WORD_MAX)];
            let flags = word_flags(w, len, camel);
            s.flags |= flags;
            if is_code_word(w) {
                s.code_words += 1;
            }
            if flags & PLAN != 0 {
                s.plan_words += 1;
            }
            step = match (step, w) {
                (2, b"step") => {
                    s.flags |= STEP_BY_STEP;
                    0
                }
                (1, b"by") => 2,
                (_, b"step") => 1,
                _ => 0,
            };
            len = 0;
            camel = false;
            prev_lower = false;
        }
        match b {
            b'`' => {
                backticks += 1;
                if backticks == 3 {
                    s.flags |= CODE_MARK;
                }
            }
            b'{' | b'}' | b';' | b'(' | b')' | b'=' | b'[' | b']' | b'<' | b'>' => {
                s.symbols += 1;
                backticks = 0;
            }
            b'+' | b'*' | b'^' => {
                s.symbols += 1;
                backticks = 0;
                if prev_digit {
                    s.flags |= MATH; // an operator after a number is arithmetic
                }
            }
            _ => backticks = 0,
        }
        if !b.is_ascii_whitespace() {
            prev_digit = b.is_ascii_digit();
        }
    }
}

/// The flags one lower-cased word sets. `full_len` is the word's real length (the
/// buffer keeps the first [`WORD_MAX`] bytes); `camel` says it had an inner capital.
fn word_flags(w: &[u8], full_len: usize, camel: bool) -> u32 {
    let starts = |p: &[u8]| w.starts_with(p);
    let mut f = match w.first() {
        Some(b'a') => match w {
            b"architecture" | b"alternatives" | b"assumptions" | b"analyse" | b"analyze"
            | b"analysis" => PLAN,
            b"atomics" => CODE_HARD,
            _ if starts(b"algorithm") => CODE_HARD,
            _ => 0,
        },
        Some(b'b') => match w {
            b"bug" | b"bugs" => CODE_VERB,
            b"blog" => LONGFORM,
            _ => 0,
        },
        Some(b'c') => match w {
            b"code" | b"coding" | b"codegen" => CODE_FEATURE,
            b"condense" | b"condensed" => SUMMARIZE,
            b"calculate" | b"compute" | b"calculation" => MATH,
            b"compare" | b"constraints" | b"critically" => PLAN,
            b"concurrency" | b"concurrent" | b"compile" | b"compiler" => CODE_HARD,
            _ if starts(b"classif") || starts(b"categor") => CLASSIFY,
            _ => 0,
        },
        Some(b'd') => match w {
            b"debug" | b"deadlock" | b"deadlocks" => CODE_HARD,
            b"derive" | b"derivation" => PROVE,
            b"digest" => SUMMARIZE,
            _ => 0,
        },
        Some(b'e') => match w {
            b"essay" | b"article" => LONGFORM,
            b"equation" | b"equations" => MATH,
            b"estimate" | b"evaluate" => PLAN,
            _ if starts(b"extract") => EXTRACT,
            _ => 0,
        },
        Some(b'f') => match w {
            b"fix" | b"fixes" => CODE_VERB,
            _ => 0,
        },
        Some(b'h') => match w {
            b"hypotheses" | b"hypothesis" => PLAN,
            _ => 0,
        },
        Some(b'i') => match w {
            b"implement" | b"implementation" => CODE_VERB,
            b"integral" => MATH,
            b"intent" => CLASSIFY,
            b"itinerary" => PLAN,
            _ => 0,
        },
        Some(b'j') => match w {
            b"json" => JSON_WORD,
            _ => 0,
        },
        Some(b'l') => match w {
            b"label" | b"labels" | b"labeled" | b"labelled" => CLASSIFY,
            b"lemma" => PROVE,
            b"lock" | b"leak" => CODE_HARD,
            _ if starts(b"localiz") || starts(b"localis") => TRANSLATE,
            _ => 0,
        },
        Some(b'm') => match w {
            b"migration" | b"milestones" => PLAN,
            _ if starts(b"minimi") || starts(b"maximi") => PLAN,
            _ => 0,
        },
        Some(b'o') => match w {
            b"optimal" | b"optimise" | b"optimize" | b"offs" => PLAN,
            _ => 0,
        },
        Some(b'p') => match w {
            b"prove" | b"proof" | b"proofs" => PROVE,
            b"probability" | b"percentage" => MATH,
            b"panicked" => TRACE,
            b"plan" | b"planning" | b"prioritize" | b"prioritise" => PLAN,
            b"port" => CODE_VERB,
            _ => 0,
        },
        Some(b'r') => match w {
            b"refactor" | b"race" | b"review" | b"rewrite" => CODE_HARD,
            b"recommend" | b"recommendation" => PLAN,
            b"recap" => SUMMARIZE,
            b"rigorous" | b"rigorously" => PROVE,
            b"roadmap" | b"rollout" => PLAN,
            _ => 0,
        },
        Some(b's') => match w {
            b"sentiment" => CLASSIFY,
            b"solve" => MATH,
            b"strategy" | b"strategies" | b"schedule" => PLAN,
            b"security" => CODE_HARD,
            b"synopsis" => SUMMARIZE,
            b"segfault" | b"segmentation" | b"stacktrace" => TRACE,
            _ if starts(b"summar") => SUMMARIZE,
            _ => 0,
        },
        Some(b't') => match w {
            b"tldr" | b"takeaways" => SUMMARIZE,
            b"triage" => CLASSIFY,
            b"theorem" => PROVE,
            b"traceback" => TRACE,
            b"tradeoff" | b"tradeoffs" => PLAN,
            b"thread" | b"threads" | b"transactions" => CODE_HARD,
            _ if starts(b"translat") => TRANSLATE,
            _ => 0,
        },
        Some(b'w') => match w {
            b"whitepaper" => LONGFORM,
            b"write" => CODE_VERB,
            _ => 0,
        },
        _ => 0,
    };
    if camel && full_len <= WORD_MAX && (w.ends_with(b"exception") || w.ends_with(b"error")) {
        f |= TRACE;
    }
    f
}

/// Programming languages and code nouns.
fn is_code_word(w: &[u8]) -> bool {
    matches!(
        w,
        b"function"
            | b"functions"
            | b"python"
            | b"rust"
            | b"javascript"
            | b"typescript"
            | b"golang"
            | b"java"
            | b"kotlin"
            | b"sql"
            | b"bash"
            | b"regex"
            | b"script"
            | b"def"
            | b"fn"
            | b"impl"
            | b"struct"
            | b"const"
            | b"println"
            | b"printf"
            | b"async"
            | b"await"
            | b"lambda"
            | b"unittest"
            | b"pytest"
            | b"compile"
            | b"repo"
            | b"snippet"
    )
}
