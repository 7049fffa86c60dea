//! OpenAI chat completions ↔ switchyard jobs and results, as pure functions: a request
//! body becomes a job (DESIGN.md Part 1 job JSON), a result becomes a `chat.completion`
//! or `chat.completion.chunk`s. Parameters a job cannot carry are refused by name (400)
//! unless they hold OpenAI's default, so nothing a client asked for is silently dropped.

use super::error::ApiError;
use crate::job::{JobResult, Output};
use serde_json::{json, Map, Value};

/// Job fields a request may set directly (switchyard's own, e.g. through the SDK's
/// `extra_body`): they have no OpenAI meaning that could clash.
const JOB_FIELDS: [&str; 8] = [
    "task",
    "feature",
    "max_cost_usd",
    "providers",
    "region",
    "cache",
    "deadline",
    "batch",
];

/// OpenAI parameters taken only at their default value (a job cannot carry another).
fn default_only(key: &str, v: &Value) -> Option<bool> {
    let ok = match key {
        "n" => v.as_u64() == Some(1),
        "top_p" => v.as_f64() == Some(1.0),
        "frequency_penalty" | "presence_penalty" => v.as_f64() == Some(0.0),
        "logprobs" | "store" => v.as_bool() == Some(false),
        "parallel_tool_calls" => v.as_bool() == Some(true),
        "service_tier" => matches!(v.as_str(), Some("auto" | "default")),
        "top_logprobs" | "seed" | "logit_bias" | "prediction" | "audio" | "modalities"
        | "reasoning_effort" | "web_search_options" | "functions" | "function_call" => false,
        _ => return None,
    };
    Some(ok || v.is_null())
}

/// Who sends the job and where its answer goes.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: String,
    pub tenant: String,
    pub feature: Option<String>,
    /// Where the answer goes (none for a batch line: its result is read from Postgres).
    pub reply_to: Option<String>,
    /// RFC 3339: the request's timeout from now (none for a batch line).
    pub deadline: Option<String>,
}

/// What the response needs to know about the request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOptions {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// A `/v1/chat/completions` body → the job's JSON (not yet checked against the job
/// schema: the caller runs the worker's own parser over it).
pub fn request_to_job(body: &Value, ctx: &JobContext) -> Result<(Value, ChatOptions), ApiError> {
    let Some(req) = body.as_object() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let mut job = Map::new();
    job.insert("id".into(), json!(ctx.id));
    job.insert("tenant".into(), json!(ctx.tenant));
    if let Some(f) = &ctx.feature {
        job.insert("feature".into(), json!(f));
    }
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(
                ApiError::bad_request("you must provide a model parameter").with_param("model")
            )
        }
    };
    let mut opts = ChatOptions {
        model: model.clone(),
        stream: false,
        include_usage: false,
    };
    job.insert("model".into(), json!(model));
    for (k, v) in req {
        match k.as_str() {
            "model" => {}
            "messages" => {
                job.insert("messages".into(), map_messages(v)?);
            }
            "max_tokens" | "max_completion_tokens" if !v.is_null() => {
                job.insert("max_tokens".into(), v.clone());
            }
            "max_tokens" | "max_completion_tokens" => {}
            "temperature" | "stop" | "response_format" | "tools" | "tool_choice" | "user"
            | "metadata" => {
                if !v.is_null() {
                    job.insert(k.clone(), v.clone());
                }
            }
            "stream" => opts.stream = v.as_bool().unwrap_or(false),
            "stream_options" => {
                opts.include_usage = v
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            k if JOB_FIELDS.contains(&k) => {
                job.insert(k.to_string(), v.clone());
            }
            k => match default_only(k, v) {
                Some(true) => {}
                Some(false) => {
                    return Err(ApiError::bad_request(format!(
                        "parameter `{k}` is not supported by switchyard except at its default value"
                    ))
                    .with_param(k))
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "unrecognized request argument supplied: {k}"
                    ))
                    .with_param(k))
                }
            },
        }
    }
    if !job.contains_key("messages") {
        return Err(
            ApiError::bad_request("you must provide a messages parameter").with_param("messages"),
        );
    }
    if req.get("stream_options").is_some_and(|v| !v.is_null()) && !opts.stream {
        return Err(
            ApiError::bad_request("stream_options is only allowed when stream is true")
                .with_param("stream_options"),
        );
    }
    if opts.stream {
        job.insert("stream".into(), json!(true));
    }
    if let Some(d) = &ctx.deadline {
        job.entry("deadline").or_insert_with(|| json!(d));
    }
    if let Some(r) = &ctx.reply_to {
        job.insert("reply_to".into(), json!(r));
    }
    Ok((Value::Object(job), opts))
}

/// OpenAI's `developer` role is the job's `system`; everything else is the canonical
/// format already.
fn map_messages(v: &Value) -> Result<Value, ApiError> {
    let Some(list) = v.as_array() else {
        return Err(ApiError::bad_request("messages must be an array").with_param("messages"));
    };
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let mut m = m.clone();
        if let Some(o) = m.as_object_mut() {
            if o.get("role").and_then(Value::as_str) == Some("developer") {
                o.insert("role".into(), json!("system"));
            }
        }
        out.push(m);
    }
    Ok(Value::Array(out))
}

fn usage(r: &JobResult) -> Value {
    let u = &r.usage;
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// What switchyard adds to a response (ignored by OpenAI clients that do not know it).
fn extension(r: &JobResult) -> Value {
    json!({
        "job_id": r.id,
        "tenant": r.tenant,
        "provider": r.provider,
        "cost_usd": r.cost_usd.to_string(),
        "cache_hit": r.cache_hit,
        "route": r.route,
    })
}

fn message(o: &Output) -> Value {
    let mut m = json!({"role": "assistant", "content": o.content, "refusal": null});
    if !o.tool_calls.is_empty() {
        m["tool_calls"] = json!(o.tool_calls);
    }
    m
}

/// The model name a response reports: the configured model that answered.
fn model_of<'a>(r: &'a JobResult, opts: &'a ChatOptions) -> &'a str {
    r.model.as_deref().unwrap_or(&opts.model)
}

/// A succeeded result → `chat.completion`.
pub fn completion(r: &JobResult, opts: &ChatOptions, created: i64) -> Value {
    let empty = Output {
        content: None,
        tool_calls: Vec::new(),
        finish_reason: "stop".into(),
    };
    let o = r.output.as_ref().unwrap_or(&empty);
    json!({
        "id": format!("chatcmpl-{}", r.id),
        "object": "chat.completion",
        "created": created,
        "model": model_of(r, opts),
        "choices": [{"index": 0, "message": message(o), "finish_reason": o.finish_reason, "logprobs": null}],
        "usage": usage(r),
        "system_fingerprint": null,
        "switchyard": extension(r),
    })
}

/// One `chat.completion.chunk` with `delta` and `finish_reason`.
pub fn chunk(id: &str, model: &str, created: i64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        "system_fingerprint": null,
    })
}

/// The chunks that end a stream once the result is in: the text not streamed yet
/// (`sent` is what went out, a prefix of the output's text), the tool calls, the finish
/// reason, and the usage chunk when asked for. `None` when the text sent is not a prefix
/// of the answer (a provider failed mid-stream and the job failed over: OpenAI's format
/// cannot take text back).
pub fn closing_chunks(
    r: &JobResult,
    opts: &ChatOptions,
    created: i64,
    sent: &str,
) -> Option<Vec<Value>> {
    let model = model_of(r, opts);
    let content = r
        .output
        .as_ref()
        .and_then(|o| o.content.as_deref())
        .unwrap_or("");
    let rest = content.strip_prefix(sent)?;
    let mut out = Vec::new();
    if !rest.is_empty() {
        out.push(chunk(&r.id, model, created, json!({"content": rest}), None));
    }
    if let Some(o) = &r.output {
        if !o.tool_calls.is_empty() {
            let calls: Vec<Value> = o
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({"index": i, "id": c.id, "type": "function",
                        "function": {"name": c.function.name, "arguments": c.function.arguments}})
                })
                .collect();
            out.push(chunk(
                &r.id,
                model,
                created,
                json!({"tool_calls": calls}),
                None,
            ));
        }
    }
    let finish = r
        .output
        .as_ref()
        .map_or("stop", |o| o.finish_reason.as_str());
    let mut last = chunk(&r.id, model, created, json!({}), Some(finish));
    last["switchyard"] = extension(r);
    out.push(last);
    if opts.include_usage {
        let mut u = chunk(&r.id, model, created, json!({}), None);
        u["choices"] = json!([]);
        u["usage"] = usage(r);
        out.push(u);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> JobContext {
        JobContext {
            id: "fd-1".into(),
            tenant: "acme".into(),
            feature: None,
            reply_to: Some("_INBOX.fd.fd-1".into()),
            deadline: Some("2030-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn a_request_maps_to_a_job_with_the_tenant_reply_and_deadline() {
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": "hi"}], "max_completion_tokens": 20, "temperature": 0,
            "n": 1, "top_p": null, "stream": true, "stream_options": {"include_usage": true}, "task": "generation"});
        let (job, opts) = request_to_job(&body, &ctx()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job["messages"][0]["role"], "system");
        assert_eq!(job["max_tokens"], 20);
        assert_eq!(job["tenant"], "acme");
        assert_eq!(job["stream"], true);
        assert_eq!(job["task"], "generation");
        assert_eq!(job["reply_to"], "_INBOX.fd.fd-1");
        assert_eq!(job["deadline"], "2030-01-01T00:00:00Z");
        assert!(opts.stream && opts.include_usage);
        assert!(job.get("n").is_none());
    }

    #[test]
    fn parameters_a_job_cannot_carry_are_refused_by_name() {
        for (k, v) in [
            ("n", json!(2)),
            ("seed", json!(7)),
            ("top_p", json!(0.5)),
            ("frobnicate", json!(1)),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body[k] = v;
            let e = request_to_job(&body, &ctx())
                .err()
                .unwrap_or_else(|| panic!("{k} accepted"));
            assert_eq!(e.param.as_deref(), Some(k));
            assert!(e.message.contains(k));
        }
        let e = request_to_job(&json!({"messages": []}), &ctx()).err();
        assert_eq!(e.and_then(|e| e.param), Some("model".into()));
    }

    fn result(content: &str) -> JobResult {
        serde_json::from_value(json!({"id": "fd-1", "tenant": "acme", "feature": null, "status": "succeeded",
            "output": {"content": content, "tool_calls": [], "finish_reason": "stop"}, "provider": "openai",
            "model": "gpt-4o-mini", "usage": {"input_tokens": 5, "cached_input_tokens": 0, "output_tokens": 3,
            "reasoning_tokens": 0}, "cost_usd": "0.00001", "route": null, "attempts": [], "cache_hit": false,
            "queued_ms": 1, "latency_ms": 2, "error": null, "metadata": null}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_result_maps_to_a_completion_and_its_closing_chunks() {
        let opts = ChatOptions {
            model: "auto".into(),
            stream: true,
            include_usage: true,
        };
        let c = completion(&result("Hello there"), &opts, 7);
        assert_eq!(c["choices"][0]["message"]["content"], "Hello there");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["usage"]["total_tokens"], 8);
        assert_eq!(c["switchyard"]["cost_usd"], "0.00001");
        let chunks = closing_chunks(&result("Hello there"), &opts, 7, "Hello").unwrap_or_default();
        assert_eq!(chunks[0]["choices"][0]["delta"]["content"], " there");
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[2]["usage"]["prompt_tokens"], 5);
        assert!(closing_chunks(&result("Hello there"), &opts, 7, "Goodbye").is_none());
    }
}
