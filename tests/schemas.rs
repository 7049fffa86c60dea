//! The JSON Schemas in `schemas/`, the serde types in `switchyard::job` and every file in
//! `examples/` agree with each other.
//!
//! - both directions: what the schema accepts `parse_job` accepts, and what one rejects
//!   the other rejects, for the examples, the demo's ingest files and a table of invalid
//!   jobs;
//! - where they cannot agree (rules that depend on the configuration, cross-field rules
//!   JSON Schema cannot express, and a few leniencies of serde), the difference is
//!   spelled out in `documented_disagreements`, so that a change on either side shows up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use jsonschema::Validator;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use switchyard::job::{
    parse_job, Attempt, Chunk, ErrorBody, ErrorKind, Job, JobResult, Output, ParseRules, ParsedJob,
    Route, Status, Task, ToolCall, Usage,
};

// ------------------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_text(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&read_text(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `examples/<prefix>*.json`, sorted.
fn examples(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
        .map(|n| format!("examples/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples/{prefix}*.json");
    out
}

/// A 2020-12 validator that also checks `format` (date-time).
fn validator(name: &str) -> Validator {
    let schema = read_json(&format!("schemas/{name}.schema.json"));
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schemas/{name}.schema.json does not compile: {e}"))
}

fn schema_errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

fn assert_valid(v: &Validator, instance: &Value, what: &str) {
    let errors = schema_errors(v, instance);
    assert!(
        errors.is_empty(),
        "{what} breaks the schema:\n  {}",
        errors.join("\n  ")
    );
}

/// The rules of the brief: the demo configuration's limits and providers.
fn rules() -> ParseRules {
    ParseRules {
        prefix: "llm".into(),
        max_payload_bytes: 1 << 20,
        max_messages: 1000,
        max_tokens_cap: 32768,
        providers: vec![
            "openai".into(),
            "local".into(),
            "anthropic".into(),
            "gemini".into(),
        ],
        reply_to: switchyard::job::ReplyToRules::any(),
    }
}

fn subject(priority: &str, tenant: &str) -> String {
    format!("llm.jobs.{priority}.{tenant}")
}

fn parse(payload: &str, subject: &str, seq: u64) -> Result<ParsedJob, ErrorBody> {
    parse_job(payload.as_bytes(), subject, seq, &rules()).map_err(|f| f.error)
}

fn parse_value(job: &Value) -> Result<ParsedJob, ErrorBody> {
    let tenant = job["tenant"].as_str().unwrap_or("acme");
    let tenant = if switchyard::job::names::is_valid_tenant(tenant) {
        tenant
    } else {
        "acme"
    };
    parse(&job.to_string(), &subject("normal", tenant), 1)
}

/// Every key of `properties` of a schema object, sorted.
fn property_names(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

// ---------------------------------------------------------------- (a) the schemas

#[test]
fn schemas_are_valid_2020_12() {
    for name in ["job", "result", "dlq", "chunk"] {
        let schema = read_json(&format!("schemas/{name}.schema.json"));
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}: $schema"
        );
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("schemas/{name}.schema.json is not a valid 2020-12 schema: {e}");
        }
        validator(name);
    }
}

/// A producer reads the job schema: every property, at every depth, says what it is.
#[test]
fn every_job_property_has_a_description() {
    fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Object(props)) = o.get("properties") {
                    for (k, p) in props {
                        // `if` clauses repeat properties only to test them.
                        if !path.contains("/if") && p.get("description").is_none() {
                            missing.push(format!("{path}/properties/{k}"));
                        }
                    }
                }
                for (k, x) in o {
                    walk(x, &format!("{path}/{k}"), missing);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &format!("{path}/{i}"), missing);
                }
            }
            _ => {}
        }
    }
    let schema = read_json("schemas/job.schema.json");
    let mut missing = Vec::new();
    walk(&schema, "#", &mut missing);
    // Properties restated under allOf/then only narrow a property described elsewhere.
    missing.retain(|p| !p.contains("/then/") && !p.contains("/anyOf/"));
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}

/// The enums of the schemas are the serde enums.
#[test]
fn schema_enums_match_serde() {
    let job = read_json("schemas/job.schema.json");
    let tasks: Vec<Value> = [
        Task::Auto,
        Task::Extraction,
        Task::Classification,
        Task::Summarization,
        Task::Generation,
        Task::Code,
        Task::Reasoning,
    ]
    .iter()
    .map(|t| serde_json::to_value(t).unwrap())
    .collect();
    assert_eq!(job["properties"]["task"]["enum"], Value::Array(tasks));

    let kinds: Vec<Value> = ErrorKind::ALL
        .iter()
        .map(|k| serde_json::to_value(k).unwrap())
        .collect();
    let result = read_json("schemas/result.schema.json");
    assert_eq!(result["$defs"]["error_kind"]["enum"], Value::Array(kinds));
    assert_eq!(
        result["properties"]["status"]["enum"],
        json!([Status::Succeeded, Status::Failed])
    );

    // The DLQ schema repeats the result schema's definitions word for word.
    let dlq = read_json("schemas/dlq.schema.json");
    for def in ["attempt", "error", "error_kind", "decimal"] {
        assert_eq!(dlq["$defs"][def], result["$defs"][def], "$defs/{def}");
    }
}

/// The schemas name exactly the fields the serde types have.
#[test]
fn schema_fields_match_serde_fields() {
    let job_schema = read_json("schemas/job.schema.json");
    // job-full.json sets every field; serializing the parsed Job shows the struct's fields.
    let full = parse(
        &read_text("examples/job-full.json"),
        "llm.jobs.normal.acme",
        1,
    )
    .unwrap();
    let serialized = serde_json::to_value(&full.job).unwrap();
    assert_eq!(keys(&serialized), property_names(&job_schema));

    let mut message_fields = BTreeSet::new();
    for f in ["examples/job-full.json", "examples/job-tools.json"] {
        let p = parse_value(&read_json(f)).unwrap();
        for m in &p.job.messages {
            message_fields.extend(keys(&serde_json::to_value(m).unwrap()));
        }
    }
    assert_eq!(
        message_fields,
        property_names(&job_schema["$defs"]["message"])
    );

    let result_schema = read_json("schemas/result.schema.json");
    // `truncated` is written only when true: a truncated result shows every field.
    let r = serde_json::to_value(JobResult {
        truncated: true,
        ..succeeded_result()
    })
    .unwrap();
    assert_eq!(keys(&r), property_names(&result_schema));
    let required: BTreeSet<String> = result_schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut always = property_names(&result_schema);
    always.remove("truncated");
    assert_eq!(
        required, always,
        "every result field is required but `truncated`"
    );
    assert_eq!(
        keys(&r["attempts"][0]),
        property_names(&result_schema["$defs"]["attempt"])
    );
    // `cache_write_tokens` is left out when 0: a usage that has it shows every field.
    let usage = serde_json::to_value(Usage {
        cache_write_tokens: 1,
        ..Usage::default()
    })
    .unwrap();
    assert_eq!(
        keys(&usage),
        property_names(&result_schema["$defs"]["usage"])
    );
    assert!(keys(&r["usage"]).is_subset(&keys(&usage)));
    // `screen` is written only when a screening policy applied: a screened route (with a
    // restriction) shows every field.
    let screen = switchyard::screen::ScreenRecord {
        policy: "p".into(),
        findings: [("iban".to_string(), 1)].into(),
        action: "restrict".into(),
        restrict: Some(switchyard::config::Restriction {
            providers: Some(vec!["a".into()]),
            models: Some(vec!["m".into()]),
            region: Some("eu".into()),
        }),
    };
    let mut route = r["route"].clone();
    route["screen"] = serde_json::to_value(&screen).unwrap();
    assert_eq!(
        keys(&route),
        property_names(&result_schema["$defs"]["route"])
    );
    assert_eq!(
        keys(&route["screen"]),
        property_names(&result_schema["$defs"]["screen"])
    );
    assert_eq!(
        keys(&route["screen"]["restrict"]),
        property_names(&result_schema["$defs"]["screen"]["properties"]["restrict"])
    );
    assert_eq!(
        keys(&r["output"]),
        property_names(&result_schema["$defs"]["output"])
    );
}

// ------------------------------------------------------------- (b) job examples

#[test]
fn job_examples_validate_and_parse() {
    let v = validator("job");
    for file in examples("job-") {
        let text = read_text(&file);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_valid(&v, &value, &file);
        let tenant = value["tenant"].as_str().unwrap();
        let parsed = parse(&text, &subject("normal", tenant), 1)
            .unwrap_or_else(|e| panic!("{file}: parse_job refused it: {e:?}"));
        assert_eq!(parsed.envelope.id, value["id"].as_str().unwrap());
        // What serde writes back is a valid job too (defaults filled in).
        let back = serde_json::to_value(&parsed.job).unwrap();
        assert_valid(&v, &back, &format!("{file} after a serde round trip"));
    }
}

#[test]
fn full_and_tools_examples_round_trip_exactly() {
    for file in ["examples/job-full.json", "examples/job-tools.json"] {
        let value = read_json(file);
        let parsed = parse_value(&value).unwrap();
        let mut back = serde_json::to_value(&parsed.job).unwrap();
        // job-tools.json leaves cache at its default, which serde writes out.
        if value.get("cache").is_none() {
            assert_eq!(back["cache"], "use");
            back.as_object_mut().unwrap().remove("cache");
        }
        assert_eq!(back, value, "{file}");
    }
    let full = parse_value(&read_json("examples/job-full.json"))
        .unwrap()
        .job;
    assert_eq!(full.max_cost_usd, Some(Decimal::from_str("0.05").unwrap()));
}

#[test]
fn tools_example_is_multi_turn_tool_use() {
    let job: Job = parse_value(&read_json("examples/job-tools.json"))
        .unwrap()
        .job;
    let call = job
        .messages
        .iter()
        .find_map(|m| m.tool_calls.as_ref().and_then(|c| c.first()))
        .expect("an assistant message with tool_calls");
    let answered = job
        .messages
        .iter()
        .any(|m| m.tool_call_id.as_deref() == Some(call.id.as_str()));
    assert!(answered, "a tool message answers {}", call.id);
    assert!(job
        .tools
        .as_ref()
        .is_some_and(|t| t.iter().any(|t| t.function.name == call.function.name)));
}

// ------------------------------------------------------- (c) result and DLQ examples

#[test]
fn result_examples_validate_and_round_trip() {
    let v = validator("result");
    for file in examples("result-") {
        let value = read_json(&file);
        assert_valid(&v, &value, &file);
        let result: JobResult = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{file}: not a JobResult: {e}"));
        let back = serde_json::to_value(&result).unwrap();
        assert_eq!(back, value, "{file} does not round-trip through JobResult");
        // The total is the sum of the attempts.
        let sum: Decimal = result.attempts.iter().map(|a| a.cost_usd).sum();
        assert_eq!(
            sum, result.cost_usd,
            "{file}: cost_usd is the sum of attempts"
        );
    }
}

/// A streamed job's chunks: the examples (files and the schema's own) validate and
/// round-trip through `Chunk`; the schema names exactly `Chunk`'s fields; a chunk that is
/// both or neither a delta and a reset is refused by both.
#[test]
fn chunk_examples_validate_and_round_trip() {
    let v = validator("chunk");
    let schema = read_json("schemas/chunk.schema.json");
    let mut all: Vec<(String, Value)> = examples("chunk-")
        .into_iter()
        .map(|f| (f.clone(), read_json(&f)))
        .collect();
    for (i, e) in schema["examples"].as_array().unwrap().iter().enumerate() {
        all.push((format!("schema example {i}"), e.clone()));
    }
    let mut fields = BTreeSet::new();
    for (name, value) in &all {
        assert_valid(&v, value, name);
        let chunk: Chunk = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{name}: not a Chunk: {e}"));
        let back = serde_json::to_value(&chunk).unwrap();
        assert_eq!(&back, value, "{name} does not round-trip through Chunk");
        fields.extend(keys(&back));
    }
    assert_eq!(fields, property_names(&schema));
    for bad in [
        json!({"id": "j", "seq": 1}),
        json!({"id": "j", "seq": 1, "delta": "x", "reset": true, "reason": "r"}),
        json!({"id": "j", "seq": 1, "reset": true}),
        json!({"id": "j", "seq": -1, "delta": "x"}),
        json!({"id": "j", "seq": 1, "delta": "x", "extra": 1}),
    ] {
        assert!(!v.is_valid(&bad), "the chunk schema accepts {bad}");
    }
}

#[test]
fn dlq_examples_validate_and_match_the_failed_result() {
    let v = validator("dlq");
    for file in examples("dlq-") {
        let value = read_json(&file);
        assert_valid(&v, &value, &file);
        let _: Vec<Attempt> = serde_json::from_value(value["attempts"].clone()).unwrap();
        let _: ErrorBody = serde_json::from_value(value["error"].clone()).unwrap();
        // The worker's own type reads every example and writes it back unchanged.
        let entry: switchyard::queue::publish::DlqEntry =
            serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            value,
            "{file} round-trips through DlqEntry"
        );
        if let Some(b64) = value["payload_b64"].as_str() {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("{file}: payload_b64: {e}"));
        }
    }
    // dlq-entry.json is the dead letter of result-failed.json.
    let entry = read_json("examples/dlq-entry.json");
    let failed = read_json("examples/result-failed.json");
    assert_eq!(entry["error"], failed["error"]);
    assert_eq!(entry["attempts"], failed["attempts"]);
    assert_eq!(entry["job"]["id"], failed["id"]);
    assert_eq!(entry["job"]["metadata"], failed["metadata"]);
    let job = parse(
        &entry["job"].to_string(),
        entry["subject"].as_str().unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(job.job.tenant, failed["tenant"]);
}

#[test]
fn dlq_schema_rules() {
    let v = validator("dlq");
    let base = read_json("examples/dlq-entry-malformed.json");
    let mut truncated = base.clone();
    truncated["truncated"] = json!(true);
    assert_valid(&v, &truncated, "a truncated entry");
    let mut both_null = base.clone();
    both_null["payload_b64"] = Value::Null;
    assert!(!v.is_valid(&both_null), "job and payload_b64 both null");
    let mut truncated_with_job = read_json("examples/dlq-entry.json");
    truncated_with_job["truncated"] = json!(true);
    assert!(!v.is_valid(&truncated_with_job), "truncated keeps job null");
    let mut not_b64 = base;
    not_b64["payload_b64"] = json!("not base64!");
    assert!(!v.is_valid(&not_b64));
}

// ------------------------------------------------------------ (d) the ingest files

/// What the schema makes of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Schema {
    NotJson,
    Rejects,
    /// Valid per the schema; the rule it breaks needs the configuration, or the
    /// duplicate key is invisible once parsed.
    Accepts,
}

/// The deliberately bad lines of `examples/ingest.jsonl` (see `examples/README.md`).
struct Bad {
    line: usize,
    /// The id the result is filed under (`_seq<N>` for a payload that is not an object).
    filed_as: &'static str,
    schema: Schema,
    /// The error kind the job ends with.
    kind: ErrorKind,
}

const BAD: &[Bad] = &[
    Bad {
        line: 7,
        filed_as: "_seq",
        schema: Schema::NotJson,
        kind: ErrorKind::MalformedJob,
    },
    Bad {
        line: 27,
        filed_as: "_seq",
        schema: Schema::Rejects,
        kind: ErrorKind::MalformedJob,
    },
    Bad {
        line: 47,
        filed_as: "_seq",
        schema: Schema::Accepts,
        kind: ErrorKind::MalformedJob,
    },
    Bad {
        line: 67,
        filed_as: "bad-unknown-field",
        schema: Schema::Rejects,
        kind: ErrorKind::InvalidJob,
    },
    Bad {
        line: 87,
        filed_as: "bad-role",
        schema: Schema::Rejects,
        kind: ErrorKind::InvalidJob,
    },
    Bad {
        line: 107,
        filed_as: "bad-empty-messages",
        schema: Schema::Rejects,
        kind: ErrorKind::InvalidJob,
    },
    Bad {
        line: 127,
        filed_as: "bad-max-tokens",
        schema: Schema::Rejects,
        kind: ErrorKind::InvalidJob,
    },
    Bad {
        line: 147,
        filed_as: "bad-temperature",
        schema: Schema::Rejects,
        kind: ErrorKind::InvalidJob,
    },
    // providers.allow names a provider the configuration does not have.
    Bad {
        line: 167,
        filed_as: "bad-provider",
        schema: Schema::Accepts,
        kind: ErrorKind::InvalidJob,
    },
    // Valid job; the router does not know "gpt-9".
    Bad {
        line: 187,
        filed_as: "bad-model",
        schema: Schema::Accepts,
        kind: ErrorKind::UnknownModel,
    },
    // reply_to starts with the worker's own prefix (configuration).
    Bad {
        line: 207,
        filed_as: "bad-reply-to",
        schema: Schema::Accepts,
        kind: ErrorKind::InvalidJob,
    },
    // Valid job; its deadline has passed when the worker picks it up.
    Bad {
        line: 227,
        filed_as: "bad-expired",
        schema: Schema::Accepts,
        kind: ErrorKind::Expired,
    },
];

const INGEST: [(&str, &str, &str); 3] = [
    ("examples/ingest-high.jsonl", "high", "-hi"),
    ("examples/ingest.jsonl", "normal", ""),
    ("examples/ingest-low.jsonl", "low", "-lo"),
];

/// Model names a job may use under `config/demo.toml`: auto, tiers with a model, names,
/// aliases and `<provider>/<name>`; and the configured providers and regions.
struct Demo {
    models: HashSet<String>,
    providers: BTreeSet<String>,
    regions: HashSet<String>,
}

fn demo_config() -> Demo {
    let doc: toml::Table = toml::from_str(&read_text("config/demo.toml")).unwrap();
    let mut models: HashSet<String> = HashSet::from(["auto".to_string()]);
    let mut providers = BTreeSet::new();
    let mut regions = HashSet::new();
    for p in doc["providers"].as_array().unwrap() {
        providers.insert(p["name"].as_str().unwrap().to_string());
        if let Some(r) = p.get("region").and_then(|r| r.as_str()) {
            regions.insert(r.to_string());
        }
    }
    for m in doc["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        models.insert(name.to_string());
        models.insert(m["tier"].as_str().unwrap().to_string());
        models.insert(format!("{}/{name}", m["provider"].as_str().unwrap()));
        for a in m
            .get("aliases")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            models.insert(a.as_str().unwrap().to_string());
        }
    }
    Demo {
        models,
        providers,
        regions,
    }
}

#[test]
fn rules_match_the_demo_config() {
    let demo = demo_config();
    let configured: BTreeSet<String> = rules().providers.into_iter().collect();
    assert_eq!(configured, demo.providers);
}

#[test]
fn ingest_files_validate_and_parse() {
    let v = validator("job");
    let demo = demo_config();
    let now = Utc::now();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let (mut total, mut good) = (0, 0);
    let mut bad_seen = Vec::new();
    let mut tenants = BTreeSet::new();
    let mut features = BTreeSet::new();
    let mut models = BTreeSet::new();
    let mut tasks = BTreeSet::new();
    let (mut json_object, mut with_tools, mut with_tool_calls) = (0, 0, 0);

    for (file, priority, suffix) in INGEST {
        let text = read_text(file);
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.ends_with('\n'), "{file}: ends with a newline");
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            total += 1;
            let bad = if priority == "normal" {
                BAD.iter().find(|b| b.line == n)
            } else {
                None
            };
            let parsed_value = serde_json::from_str::<Value>(line).ok();
            if let Some(b) = bad {
                bad_seen.push(n);
                let schema = match &parsed_value {
                    None => Schema::NotJson,
                    Some(value) if v.is_valid(value) => Schema::Accepts,
                    Some(_) => Schema::Rejects,
                };
                assert_eq!(schema, b.schema, "{file}:{n}: schema verdict");
                // Bad lines carry their own tenant when they have one; else acme's subject.
                let tenant = parsed_value
                    .as_ref()
                    .and_then(|v| v.get("tenant"))
                    .and_then(Value::as_str)
                    .unwrap_or("acme");
                let result = parse_job(
                    line.as_bytes(),
                    &subject(priority, tenant),
                    n as u64,
                    &rules(),
                );
                match b.kind {
                    ErrorKind::MalformedJob | ErrorKind::InvalidJob => {
                        let f = result
                            .err()
                            .unwrap_or_else(|| panic!("{file}:{n}: parse_job accepted it"));
                        assert_eq!(f.error.kind, b.kind, "{file}:{n}: {}", f.error.message);
                        let filed = if b.filed_as == "_seq" {
                            format!("_seq{n}")
                        } else {
                            b.filed_as.into()
                        };
                        assert_eq!(f.envelope.id, filed, "{file}:{n}");
                    }
                    // Valid jobs that fail later, in the worker: not a parse error.
                    ErrorKind::UnknownModel => {
                        let p = result.unwrap_or_else(|f| panic!("{file}:{n}: {:?}", f.error));
                        assert_eq!(p.job.id, b.filed_as);
                        assert!(
                            !demo.models.contains(&p.job.model),
                            "{} is configured",
                            p.job.model
                        );
                    }
                    ErrorKind::Expired => {
                        let p = result.unwrap_or_else(|f| panic!("{file}:{n}: {:?}", f.error));
                        assert_eq!(p.job.id, b.filed_as);
                        assert!(
                            p.job.deadline.is_some_and(|d| d < now),
                            "{file}:{n}: deadline"
                        );
                    }
                    other => panic!("no bad line of kind {other}"),
                }
                continue;
            }

            good += 1;
            let value = parsed_value.unwrap_or_else(|| panic!("{file}:{n}: not JSON"));
            let errors = schema_errors(&v, &value);
            assert!(
                errors.is_empty(),
                "{file}:{n} breaks the schema: {errors:?}"
            );
            let tenant = value["tenant"].as_str().unwrap();
            let p = parse_job(
                line.as_bytes(),
                &subject(priority, tenant),
                n as u64,
                &rules(),
            )
            .unwrap_or_else(|f| panic!("{file}:{n}: {:?}", f.error));
            let job = p.job;
            assert!(
                job.id.ends_with(suffix),
                "{file}:{n}: id {} should end in {suffix:?}",
                job.id
            );
            if suffix.is_empty() {
                assert!(
                    !job.id.ends_with("-hi") && !job.id.ends_with("-lo"),
                    "{file}:{n}"
                );
            }
            assert!(
                seen.insert((job.tenant.clone(), job.id.clone())),
                "{file}:{n}: duplicate id {}",
                job.id
            );
            // Good lines must succeed in the demo: a configured model, a future deadline,
            // a configured region, metadata with the document.
            assert!(
                demo.models.contains(&job.model),
                "{file}:{n}: model {}",
                job.model
            );
            assert!(
                job.deadline.is_none_or(|d| d > now),
                "{file}:{n}: deadline passed"
            );
            assert!(
                job.region.as_ref().is_none_or(|r| demo.regions.contains(r)),
                "{file}:{n}"
            );
            assert!(
                job.metadata.as_ref().is_some_and(|m| m["doc"].is_string()),
                "{file}:{n}: metadata.doc"
            );
            let mt = job.max_tokens.unwrap();
            assert!((64..=512).contains(&mt), "{file}:{n}: max_tokens {mt}");
            tenants.insert(job.tenant.clone());
            features.insert(job.feature.clone().unwrap());
            models.insert(job.model.clone());
            tasks.insert(job.task.as_str());
            json_object += usize::from(matches!(
                job.response_format,
                Some(switchyard::job::ResponseFormat::JsonObject)
            ));
            with_tools += usize::from(job.tools.is_some());
            with_tool_calls += usize::from(job.messages.iter().any(|m| m.tool_calls.is_some()));
        }
    }

    assert!(total >= 330, "{total} lines");
    assert_eq!(
        bad_seen,
        BAD.iter().map(|b| b.line).collect::<Vec<_>>(),
        "bad lines"
    );
    assert_eq!(good + BAD.len(), total);
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(tenants, set(&["acme", "globex", "initech"]));
    assert_eq!(
        features,
        set(&[
            "code-review",
            "contract-extraction",
            "doc-summary",
            "support-reply",
            "ticket-triage"
        ])
    );
    for m in [
        "auto",
        "fast",
        "cheap",
        "balanced",
        "gpt-4o-mini",
        "openai/gpt-4o",
        "llama",
        "local/llama-3.1-8b",
    ] {
        assert!(models.contains(m), "no job uses model {m}");
    }
    for t in [
        "auto",
        "extraction",
        "classification",
        "summarization",
        "generation",
        "code",
    ] {
        assert!(tasks.contains(t), "no job has task {t}");
    }
    assert!(json_object >= 10 && with_tools >= 3 && with_tool_calls >= 1);
}

// ------------------------------------------- (e) invalid jobs: schema and parse_job agree

fn base_job() -> Value {
    json!({"id": "j-1", "tenant": "acme", "messages": [{"role": "user", "content": "hi"}]})
}

/// `base_job()` with `patch`'s keys set (a null value removes the key).
fn job_with(patch: Value) -> Value {
    let mut job = base_job();
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            job.as_object_mut().unwrap().remove(k);
        } else {
            job[k] = v.clone();
        }
    }
    job
}

fn messages(msgs: Value) -> Value {
    job_with(json!({ "messages": msgs }))
}

fn invalid_jobs() -> Vec<(&'static str, Value, &'static str)> {
    let user = json!({"role": "user", "content": "hi"});
    let call =
        json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let tool =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    vec![
        (
            "wrong role",
            messages(json!([{"role": "bot", "content": "hi"}])),
            "messages[0].role",
        ),
        ("id with a space", job_with(json!({"id": "j 1"})), "id"),
        (
            "stream without reply_to",
            job_with(json!({"stream": true})),
            "stream",
        ),
        (
            "stream not a boolean",
            job_with(json!({"stream": "yes"})),
            "stream",
        ),
        ("id with a dot", job_with(json!({"id": "doc.1"})), "id"),
        ("reserved id", job_with(json!({"id": "_seq1"})), "id"),
        (
            "id too long",
            job_with(json!({"id": "a".repeat(129)})),
            "id",
        ),
        (
            "tenant in capitals",
            job_with(json!({"tenant": "Acme"})),
            "tenant",
        ),
        (
            "extra field",
            job_with(json!({"modle": "gpt-4o-mini"})),
            "modle",
        ),
        (
            "temperature 3",
            job_with(json!({"temperature": 3})),
            "temperature",
        ),
        (
            "negative temperature",
            job_with(json!({"temperature": -0.1})),
            "temperature",
        ),
        (
            "stop with 5 items",
            job_with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            "stop",
        ),
        ("empty stop string", job_with(json!({"stop": [""]})), "stop"),
        (
            "max_tokens 0",
            job_with(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            "max_tokens negative",
            job_with(json!({"max_tokens": -5})),
            "max_tokens",
        ),
        (
            "max_tokens a string",
            job_with(json!({"max_tokens": "512"})),
            "max_tokens",
        ),
        (
            "reply_to wildcard",
            job_with(json!({"reply_to": "a.*"})),
            "reply_to",
        ),
        (
            "reply_to empty token",
            job_with(json!({"reply_to": "a..b"})),
            "reply_to",
        ),
        (
            "reply_to $JS",
            job_with(json!({"reply_to": "$JS.API.x"})),
            "reply_to",
        ),
        (
            "reply_to too long",
            job_with(json!({"reply_to": "a".repeat(257)})),
            "reply_to",
        ),
        (
            "bad cache value",
            job_with(json!({"cache": "sometimes"})),
            "cache",
        ),
        ("bad task", job_with(json!({"task": "poetry"})), "task"),
        (
            "max_cost_usd 0",
            job_with(json!({"max_cost_usd": 0})),
            "max_cost_usd",
        ),
        (
            "deadline not a date",
            job_with(json!({"deadline": "tomorrow"})),
            "deadline",
        ),
        (
            "providers with an unknown key",
            job_with(json!({"providers": {"only": ["openai"]}})),
            "providers",
        ),
        ("empty feature", job_with(json!({"feature": ""})), "feature"),
        ("empty region", job_with(json!({"region": ""})), "region"),
        (
            "missing messages",
            job_with(json!({"messages": null})),
            "messages",
        ),
        ("empty messages", messages(json!([])), "messages"),
        ("missing id", job_with(json!({"id": null})), "id"),
        (
            "content part type video",
            messages(json!([{"role": "user", "content": [{"type": "video", "url": "x"}]}])),
            "messages[0].content",
        ),
        (
            "text part without text",
            messages(json!([{"role": "user", "content": [{"type": "text"}]}])),
            "messages[0].content",
        ),
        (
            "content a number",
            messages(json!([{"role": "user", "content": 42}])),
            "messages[0].content",
        ),
        (
            "user content null",
            messages(json!([{"role": "user", "content": null}])),
            "messages[0].content",
        ),
        (
            "user content missing",
            messages(json!([{"role": "user"}])),
            "messages[0].content",
        ),
        (
            "assistant content null without tool calls",
            messages(json!([user, {"role": "assistant", "content": null, "tool_calls": []}])),
            "messages[1].content",
        ),
        (
            "unknown message field",
            messages(json!([{"role": "user", "content": "hi", "tokens": 3}])),
            "messages[0]",
        ),
        (
            "tool message without tool_call_id",
            messages(
                json!([user, {"role": "assistant", "content": null, "tool_calls": [call]}, {"role": "tool", "content": "42"}]),
            ),
            "messages[2].tool_call_id",
        ),
        (
            "tool_call_id on a user message",
            messages(json!([{"role": "user", "content": "hi", "tool_call_id": "c1"}])),
            "messages[0].tool_call_id",
        ),
        (
            "tool_calls on a user message",
            messages(json!([{"role": "user", "content": "hi", "tool_calls": [call]}])),
            "messages[0].tool_calls",
        ),
        (
            "tool call of type retrieval",
            messages(
                json!([user, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "retrieval", "function": {"name": "f", "arguments": "{}"}}]}]),
            ),
            "messages[1].tool_calls[0]",
        ),
        (
            "response_format xml",
            job_with(json!({"response_format": {"type": "xml"}})),
            "response_format",
        ),
        (
            "json_schema without a name",
            job_with(
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}),
            ),
            "response_format",
        ),
        (
            "json_schema with an empty name",
            job_with(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": ""}}}),
            ),
            "response_format.json_schema.name",
        ),
        (
            "tool of type retrieval",
            job_with(json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]})),
            "tools[0]",
        ),
        (
            "tool name with a space",
            job_with(json!({"tools": [{"type": "function", "function": {"name": "get order"}}]})),
            "tools[0].function.name",
        ),
        (
            "tool parameters not an object",
            job_with(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            ),
            "tools[0].function.parameters",
        ),
        (
            "tool_choice always",
            job_with(json!({"tools": [tool], "tool_choice": "always"})),
            "tool_choice",
        ),
        (
            "tool_choice required without tools",
            job_with(json!({"tool_choice": "required"})),
            "tool_choice",
        ),
        (
            "tool_choice function without tools",
            job_with(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
            "tool_choice",
        ),
        ("task null", base_job().tap_set("task", Value::Null), "task"),
        (
            "model null",
            base_job().tap_set("model", Value::Null),
            "model",
        ),
    ]
}

#[test]
fn base_job_is_valid_for_both() {
    let v = validator("job");
    assert_valid(&v, &base_job(), "the base job");
    parse_value(&base_job()).unwrap();
}

#[test]
fn invalid_jobs_are_rejected_by_schema_and_parse_job() {
    let v = validator("job");
    let mut problems = Vec::new();
    for (name, job, field) in invalid_jobs() {
        if v.is_valid(&job) {
            problems.push(format!("{name}: the schema accepts {job}"));
        }
        match parse_value(&job) {
            Ok(_) => problems.push(format!("{name}: parse_job accepts {job}")),
            Err(e) => {
                if e.kind != ErrorKind::InvalidJob {
                    problems.push(format!("{name}: {:?} instead of invalid_job", e.kind));
                }
                if !e.message.contains(field) {
                    problems.push(format!(
                        "{name}: message {:?} does not name {field}",
                        e.message
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Where the schema and `parse_job` cannot or do not agree. Each case states what both
/// do today; if one side changes, move the case into `invalid_jobs` (or update the
/// schema's descriptions).
#[test]
fn documented_disagreements() {
    let v = validator("job");
    let call = |args: &str| json!({"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}});
    let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    // (case, job, schema accepts, parse_job accepts)
    let cases: Vec<(&str, Value, bool, bool)> = vec![
        // --- Rules that depend on the configuration: the schema cannot know them.
        (
            "providers.allow names an unconfigured provider",
            job_with(json!({"providers": {"allow": ["mistral"]}})),
            true,
            false,
        ),
        (
            "reply_to starts with the worker's prefix",
            job_with(json!({"reply_to": "llm.results.x"})),
            true,
            false,
        ),
        (
            "max_tokens above limits.max_tokens_cap",
            job_with(json!({"max_tokens": 40000})),
            true,
            false,
        ),
        (
            "more messages than limits.max_messages",
            messages(Value::Array(many)),
            true,
            false,
        ),
        (
            "payload above limits.max_payload_bytes",
            job_with(json!({"metadata": "x".repeat((1 << 20) + 1)})),
            true,
            false,
        ),
        // --- Rules JSON Schema cannot express (cross-references, string contents).
        (
            "duplicate tool names",
            job_with(json!({"tools": [tool("f"), tool("f")]})),
            true,
            false,
        ),
        (
            "tool_choice names a tool that is not in tools",
            job_with(
                json!({"tools": [tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            ),
            true,
            false,
        ),
        (
            "tool-call arguments that are not a JSON object (contentSchema is only an annotation)",
            messages(
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [call("not json")]}]),
            ),
            true,
            false,
        ),
        (
            "a string holding U+0000",
            job_with(json!({"user": "a\u{0}b"})),
            true,
            false,
        ),
        // maxLength counts characters, the worker counts bytes (Postgres columns).
        (
            "feature of 200 characters but 400 bytes",
            job_with(json!({"feature": "é".repeat(200)})),
            true,
            false,
        ),
        // JSON Schema's integer is any number with a zero fraction; serde's u32 is not.
        (
            "max_tokens written as 512.0",
            job_with(json!({"max_tokens": 512.0})),
            true,
            false,
        ),
        // --- Leniencies of serde: the schema is the contract, these are not promised.
        (
            "optional fields set to null",
            base_job()
                .tap_set("feature", Value::Null)
                .tap_set("max_tokens", Value::Null),
            false,
            true,
        ),
        (
            "stop set to null",
            base_job().tap_set("stop", Value::Null),
            false,
            true,
        ),
        (
            "max_cost_usd as a decimal string",
            job_with(json!({"max_cost_usd": "0.05"})),
            false,
            true,
        ),
        // chrono reads a relaxed RFC 3339; the schema's date-time is strict RFC 3339.
        (
            "deadline with a space for the T",
            job_with(json!({"deadline": "2030-01-01 18:00:00Z"})),
            false,
            true,
        ),
        (
            "deadline with a signed year",
            job_with(json!({"deadline": "+2030-01-01T18:00:00Z"})),
            false,
            true,
        ),
        // The router fails it as unknown_model instead.
        (
            "an empty model",
            job_with(json!({"model": ""})),
            false,
            true,
        ),
    ];
    let mut problems = Vec::new();
    for (name, job, schema_ok, parse_ok) in cases {
        let s = v.is_valid(&job);
        let p = parse_value(&job);
        if s != schema_ok {
            problems.push(format!(
                "{name}: schema accepts = {s}, documented {schema_ok}"
            ));
        }
        if p.is_ok() != parse_ok {
            problems.push(format!(
                "{name}: parse_job accepts = {}, documented {parse_ok}: {:?}",
                p.is_ok(),
                p.err()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The tenant must equal the subject's: the subject is not part of the payload.
    let job = job_with(json!({"tenant": "globex"}));
    assert!(v.is_valid(&job));
    let e = parse(&job.to_string(), "llm.jobs.normal.acme", 1).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidJob);
    assert!(e.message.contains("tenant"), "{}", e.message);
}

trait TapSet {
    fn tap_set(self, key: &str, value: Value) -> Value;
}

impl TapSet for Value {
    fn tap_set(mut self, key: &str, value: Value) -> Value {
        self[key] = value;
        self
    }
}

// ------------------------------------------------- results built in code validate

fn succeeded_result() -> JobResult {
    JobResult {
        id: "doc-1-chunk-2".into(),
        tenant: "acme".into(),
        feature: Some("doc-summary".into()),
        status: Status::Succeeded,
        output: Some(Output {
            content: None,
            // FunctionType is not re-exported, so the call is built from JSON.
            tool_calls: vec![serde_json::from_value::<ToolCall>(json!({
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": "{\"order_id\":\"A-1\"}"}
            }))
            .unwrap()],
            finish_reason: "tool_calls".into(),
        }),
        provider: Some("openai".into()),
        model: Some("gpt-4o-mini".into()),
        usage: Usage {
            input_tokens: 1200,
            cached_input_tokens: 1024,
            output_tokens: 40,
            ..Usage::default()
        },
        cost_usd: Decimal::from_str("0.0001512").unwrap(),
        route: Some(Route {
            task: "generation".into(),
            tier: Some("fast".into()),
            reason: "default; generation; 1200 tokens → fast; rule 0: A/B variant gpt-4o-mini; chain gpt-4o-mini".into(),
            variant: Some("gpt-4o-mini".into()),
            screen: None,
        }),
        attempts: vec![Attempt {
            attempt: 1,
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            outcome: "succeeded".into(),
            latency_ms: 310,
            cost_usd: Decimal::from_str("0.0001512").unwrap(),
            status: Some(200),
            message: Some("ok".into()),
        }],
        cache_hit: false,
        queued_ms: 3,
        latency_ms: 320,
        error: None,
        truncated: false,
        metadata: Some(json!({"doc": "1", "tags": ["a", "b"]})),
    }
}

fn failed_result(kind: ErrorKind) -> JobResult {
    JobResult {
        id: "_seq42".into(),
        tenant: "_unknown".into(),
        feature: None,
        status: Status::Failed,
        output: None,
        provider: None,
        model: None,
        usage: Usage::default(),
        cost_usd: Decimal::ZERO,
        route: None,
        attempts: vec![],
        cache_hit: false,
        queued_ms: 0,
        latency_ms: 1,
        error: Some(ErrorBody::new(kind, format!("failed as {kind}"))),
        truncated: false,
        metadata: None,
    }
}

#[test]
fn results_built_in_code_validate() {
    let v = validator("result");
    let ok = serde_json::to_value(succeeded_result()).unwrap();
    assert_valid(&v, &ok, "a succeeded JobResult");
    assert!(ok["cost_usd"].is_string(), "cost_usd is a decimal string");
    for kind in ErrorKind::ALL {
        let r = serde_json::to_value(failed_result(kind)).unwrap();
        assert_valid(&v, &r, &format!("a failed JobResult ({kind})"));
    }
    // A failed result with attempts that cost something.
    let mut r = failed_result(ErrorKind::ProvidersExhausted);
    r.id = "j-1".into();
    r.tenant = "globex".into();
    r.attempts = succeeded_result().attempts;
    r.attempts[0].outcome = "server_error".into();
    r.attempts[0].status = Some(503);
    r.attempts[0].cost_usd = Decimal::from_str("0.000000").unwrap();
    assert_valid(
        &v,
        &serde_json::to_value(&r).unwrap(),
        "failed with attempts",
    );
}

#[test]
fn result_schema_rejects_what_the_worker_never_writes() {
    let v = validator("result");
    let ok = serde_json::to_value(succeeded_result()).unwrap();
    let bad = |f: &dyn Fn(&mut Value)| {
        let mut r = ok.clone();
        f(&mut r);
        r
    };
    let cases = [
        (
            "cost as a number",
            bad(&|r| r["cost_usd"] = json!(0.0001512)),
        ),
        ("negative cost", bad(&|r| r["cost_usd"] = json!("-1"))),
        (
            "missing field",
            bad(&|r| {
                r.as_object_mut().unwrap().remove("metadata");
            }),
        ),
        ("extra field", bad(&|r| r["extra"] = json!(1))),
        (
            "unknown error kind",
            bad(&|r| {
                r["status"] = json!("failed");
                r["error"] = json!({"kind": "oops", "message": "x"});
            }),
        ),
        (
            "succeeded with an error",
            bad(&|r| r["error"] = json!({"kind": "internal", "message": "x"})),
        ),
        (
            "failed without an error",
            bad(&|r| r["status"] = json!("failed")),
        ),
        ("unknown status", bad(&|r| r["status"] = json!("running"))),
        (
            "attempt cost as a number",
            bad(&|r| r["attempts"][0]["cost_usd"] = json!(0.1)),
        ),
        (
            "attempt 0",
            bad(&|r| r["attempts"][0]["attempt"] = json!(0)),
        ),
        (
            "unknown finish_reason",
            bad(&|r| r["output"]["finish_reason"] = json!("eos")),
        ),
    ];
    for (name, r) in cases {
        assert!(!v.is_valid(&r), "{name}: the result schema accepts {r}");
    }
}
