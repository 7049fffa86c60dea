use super::*;

fn rules() -> ParseRules {
    ParseRules {
        prefix: "llm".into(),
        max_payload_bytes: 4096,
        max_messages: 4,
        max_tokens_cap: 1000,
        providers: vec!["openai".into(), "anthropic".into()],
        reply_to: crate::job::ReplyToRules::any(),
    }
}

const SUBJ: &str = "llm.jobs.normal.acme";

fn ok(payload: &str) -> ParsedJob {
    parse_job(payload.as_bytes(), SUBJ, 7, &rules()).unwrap()
}

fn err(payload: &[u8], subject: &str) -> ParseFailure {
    *parse_job(payload, subject, 7, &rules()).unwrap_err()
}

fn job_with(extra: &str) -> String {
    format!(
        r#"{{"id":"j-1","tenant":"acme","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
    )
}

#[test]
fn minimal_job_parses_with_defaults() {
    let p = ok(&job_with(""));
    assert_eq!(p.job.id, "j-1");
    assert_eq!(p.job.model, "auto");
    assert_eq!(p.envelope.tenant, "acme");
    assert_eq!(p.envelope.priority, Some(Priority::Normal));
}

#[test]
fn full_job_parses() {
    let p = ok(&job_with(
        r#","feature":"f","user":"u","task":"extraction","model":"fast","max_tokens":10,
        "temperature":0.2,"stop":"\n\n","response_format":{"type":"json_object"},
        "tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],
        "tool_choice":{"type":"function","function":{"name":"get"}},"max_cost_usd":0.05,
        "deadline":"2026-11-22T18:00:00Z","providers":{"allow":["openai"],"deny":[]},
        "region":"eu","cache":"bypass","reply_to":"_INBOX.x9f.1","metadata":{"b":1,"a":[2]}"#,
    ));
    assert_eq!(p.job.max_cost_usd, Some(Decimal::new(5, 2)));
    assert_eq!(p.job.stop, Some(vec!["\n\n".to_string()]));
    assert_eq!(p.envelope.reply_to.as_deref(), Some("_INBOX.x9f.1"));
    // metadata keeps its key order
    assert_eq!(
        serde_json::to_string(&p.job.metadata).unwrap(),
        r#"{"b":1,"a":[2]}"#
    );
}

#[test]
fn malformed_payloads() {
    let cases: &[&[u8]] = &[
        b"not json",
        b"[1,2]",
        b"42",
        b"{\"id\":\"a\"} trailing",
        b"{\"id\":\"a\",\"id\":\"b\"}",
        b"{\"id\":\"a\",\"metadata\":{\"x\":1,\"x\":2}}",
        b"\xff\xfe{}",
        b"",
    ];
    for c in cases {
        let f = err(c, SUBJ);
        assert_eq!(
            f.error.kind,
            ErrorKind::MalformedJob,
            "{:?}",
            String::from_utf8_lossy(c)
        );
        assert_eq!(f.envelope.id, "_seq7");
        assert_eq!(f.envelope.tenant, "acme");
        assert!(f.job_json.is_none());
    }
}

#[test]
fn invalid_jobs_name_the_field() {
    let cases = [
        (job_with(r#","max_tokens":0"#), "max_tokens"),
        (job_with(r#","max_tokens":1001"#), "max_tokens"),
        (job_with(r#","temperature":2.5"#), "temperature"),
        (job_with(r#","stop":["a","b","c","d","e"]"#), "stop"),
        (job_with(r#","max_cost_usd":0"#), "max_cost_usd"),
        (job_with(r#","deadline":"tomorrow""#), "deadline"),
        (job_with(r#","modle":"x""#), "modle"),
        (job_with(r#","task":"poetry""#), "task"),
        (job_with(r#","reply_to":"llm.results.x""#), "reply_to"),
        (job_with(r#","reply_to":"a.*""#), "reply_to"),
        (job_with(r#","providers":{"allow":["mistral"]}"#), "providers.allow[0]"),
        (job_with(r#","user":"a\u0000b""#), "user"),
        (
            r#"{"id":"j-1","tenant":"acme","messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}"#.into(),
            "messages[1].role",
        ),
        (r#"{"id":"j-1","tenant":"acme","messages":[]}"#.into(), "messages"),
        (r#"{"id":"j 1","tenant":"acme","messages":[{"role":"user","content":"a"}]}"#.into(), "id"),
        (r#"{"id":"j-1","tenant":"other","messages":[{"role":"user","content":"a"}]}"#.into(), "tenant"),
        (r#"{"id":"j-1","tenant":"acme"}"#.into(), "messages"),
        (
            r#"{"id":"j-1","tenant":"acme","messages":[{"role":"tool","content":"a"}]}"#.into(),
            "messages[0].tool_call_id",
        ),
        (
            r#"{"id":"j-1","tenant":"acme","messages":[{"role":"user","content":[{"type":"video"}]}]}"#.into(),
            "messages[0].content[0]",
        ),
    ];
    for (payload, field) in cases {
        let f = err(payload.as_bytes(), SUBJ);
        assert_eq!(f.error.kind, ErrorKind::InvalidJob, "{payload}");
        assert!(
            f.error.message.contains(field),
            "{payload}: {:?} should name {field}",
            f.error.message
        );
        assert!(f.job_json.is_some());
    }
}

#[test]
fn too_many_messages_and_oversized_payload() {
    let msgs = [r#"{"role":"user","content":"a"}"#; 5].join(",");
    let f = err(
        format!(r#"{{"id":"j-1","tenant":"acme","messages":[{msgs}]}}"#).as_bytes(),
        SUBJ,
    );
    assert!(f.error.message.contains("limits.max_messages"));
    let big = job_with(&format!(r#","metadata":"{}""#, "x".repeat(5000)));
    let f = err(big.as_bytes(), SUBJ);
    assert_eq!(f.error.kind, ErrorKind::InvalidJob);
    assert!(
        f.error.message.contains("max_payload_bytes"),
        "{}",
        f.error.message
    );
    assert_eq!(f.envelope.id, "j-1");
}

#[test]
fn subjects() {
    let p = job_with("");
    let f = err(p.as_bytes(), "llm.jobs.normal.acme.extra");
    assert_eq!(f.error.kind, ErrorKind::InvalidJob);
    assert_eq!(f.envelope.tenant, "acme");
    assert_eq!(f.envelope.id, "j-1");
    let f = err(p.as_bytes(), "llm.jobs.normal.ACME");
    assert_eq!(f.envelope.tenant, "_unknown");
    assert_eq!(f.error.kind, ErrorKind::InvalidJob);
    let info = SubjectInfo::parse("llm.jobs.high.acme", "llm");
    assert!(info.exact);
    assert_eq!(info.priority, Some(Priority::High));
}

#[test]
fn envelope_keeps_only_valid_reply_to() {
    let f = err(
        job_with(r#","reply_to":"ok.subject","temperature":9"#).as_bytes(),
        SUBJ,
    );
    assert_eq!(f.envelope.reply_to.as_deref(), Some("ok.subject"));
    let f = err(
        job_with(r#","reply_to":"$JS.API.x","temperature":9"#).as_bytes(),
        SUBJ,
    );
    assert_eq!(f.envelope.reply_to, None);
}

#[test]
fn nul_in_a_metadata_key_is_invalid() {
    let payload = br#"{"id":"poison-p16","tenant":"acme","feature":"summarise","user":"u-33","model":"fast","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"job acme/poison-p16: summarise this chunk. obligation warranty renewal notice delivery renewal payment amendment schedule party payment contract clause liability signature term party clause amendment obligation warranty notice warranty party appendix term term liability appendix contract liability schedule delivery delivery notice party warranty renewal schedule term contract delivery amendment clause section"}],"max_tokens":32,"temperature":0.2,"metadata":{"a\u0000b":1}}"#;
    let f = parse_job(payload, "llm.jobs.normal.acme", 7, &rules()).unwrap_err();
    assert_eq!(f.error.kind, ErrorKind::InvalidJob, "{:?}", f.error);
    assert!(f.error.message.contains("U+0000"), "{}", f.error.message);
    // The message names the key without the NUL itself (Postgres could not store it).
    assert!(
        f.error.message.starts_with("metadata.a\\u0000b:"),
        "{}",
        f.error.message
    );
    assert!(!f.error.message.contains('\0'));
}

/// The fast path and the long way agree on every input we have: the fuzz corpus (subject,
/// newline, payload), the examples, and the labeled routing set.
#[test]
fn fast_path_accepts_only_what_the_long_way_accepts() {
    let rules = ParseRules {
        prefix: "llm".into(),
        max_payload_bytes: 64 * 1024,
        max_messages: 16,
        max_tokens_cap: 32_768,
        providers: vec!["openai".into(), "anthropic".into(), "gemini".into()],
        reply_to: crate::job::ReplyToRules::any(),
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(root.join("fuzz/corpus/parse_job")).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let (subject, payload) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (
                String::from_utf8_lossy(&data[..i]).into_owned(),
                data[i + 1..].to_vec(),
            ),
            None => ("llm.jobs.normal.acme".to_string(), data),
        };
        inputs.push((subject, payload));
    }
    let as_input = |job: &Value| {
        let tenant = job["tenant"].as_str().unwrap_or("acme").to_string();
        (
            format!("llm.jobs.low.{tenant}"),
            serde_json::to_vec(job).unwrap(),
        )
    };
    let labeled =
        std::fs::read_to_string(root.join("tests/fixtures/routing/labeled.jsonl")).unwrap();
    for line in labeled.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        inputs.push(as_input(&v["job"]));
    }
    for name in ["job-full.json", "job-minimal.json", "job-tools.json"] {
        let v: Value =
            serde_json::from_slice(&std::fs::read(root.join("examples").join(name)).unwrap())
                .unwrap();
        inputs.push(as_input(&v));
    }
    let (mut fast, mut refused) = (0, 0);
    for (subject, payload) in &inputs {
        let quick = parse_job(payload, subject, 9, &rules);
        let slow = parse_job_checked(payload, subject, 9, &rules);
        match (quick, slow) {
            (Ok(q), Ok(s)) => {
                assert_eq!(
                    q.job,
                    s.job,
                    "{subject}: {}",
                    String::from_utf8_lossy(payload)
                );
                assert_eq!(q.envelope, s.envelope);
                fast += 1;
            }
            (Err(q), Err(s)) => {
                assert_eq!(q.error, s.error);
                assert_eq!(q.envelope, s.envelope);
                refused += 1;
            }
            (q, s) => panic!(
                "{subject}: {} -> fast {:?}, long way {:?}",
                String::from_utf8_lossy(payload),
                q.map(|p| p.job.id),
                s.map(|p| p.job.id)
            ),
        }
    }
    // The inputs hold both kinds in numbers, so the comparison means something.
    assert!(fast >= 370, "only {fast} inputs parsed");
    assert!(refused >= 300, "only {refused} inputs refused");
}

/// A `reply_to` outside the tenant's allow-list is `invalid_job`, and the failure is not
/// published there either; both ways through the parser agree.
#[test]
fn reply_to_outside_the_allow_list_is_invalid_and_not_used() {
    use crate::job::{ReplyToRules, SubjectPattern};
    let pat = |s: &str| SubjectPattern::parse(s, "llm").unwrap();
    let rules = ParseRules {
        reply_to: ReplyToRules::new(
            vec![pat("_INBOX.>")],
            [("globex".to_string(), vec![pat("globex.replies.*")])],
        ),
        ..rules()
    };
    let job = |tenant: &str, reply_to: &str| {
        format!(
            r#"{{"id":"j-1","tenant":"{tenant}","reply_to":"{reply_to}","messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    for (tenant, reply_to, allowed) in [
        ("acme", "_INBOX.a.1", true),
        ("acme", "orders.create", false),
        ("acme", "globex.replies.x", false),
        ("globex", "globex.replies.x", true),
        ("globex", "_INBOX.a.1", false),
    ] {
        let subject = format!("llm.jobs.normal.{tenant}");
        let payload = job(tenant, reply_to);
        let fast = parse_job(payload.as_bytes(), &subject, 7, &rules);
        let long = parse_job_checked(payload.as_bytes(), &subject, 7, &rules);
        assert_eq!(fast.is_ok(), allowed, "{tenant} {reply_to}");
        assert_eq!(long.is_ok(), allowed, "{tenant} {reply_to}");
        if !allowed {
            let f = fast.unwrap_err();
            assert_eq!(f.error.kind, ErrorKind::InvalidJob);
            assert!(
                f.error.message.starts_with("reply_to:") && f.error.message.contains(reply_to),
                "{}",
                f.error.message
            );
            assert_eq!(f.envelope.reply_to, None, "nothing is published there");
        }
    }
    // A job invalid for another reason keeps an allowed reply_to for its failure only.
    let bad = r#"{"id":"j-2","tenant":"acme","temperature":9,"reply_to":"_INBOX.b","messages":[{"role":"user","content":"x"}]}"#;
    let f = parse_job(bad.as_bytes(), "llm.jobs.normal.acme", 7, &rules).unwrap_err();
    assert_eq!(f.envelope.reply_to.as_deref(), Some("_INBOX.b"));
    let bad = bad.replace("_INBOX.b", "orders.b");
    let f = parse_job(bad.as_bytes(), "llm.jobs.normal.acme", 7, &rules).unwrap_err();
    assert_eq!(f.envelope.reply_to, None);
}
