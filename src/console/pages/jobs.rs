//! `/jobs`: search by tenant, id (or `prefix*`), feature, status, error kind and time
//! range, newest first, 50 a page (keyset paging: the next page starts after the last
//! job shown). `/jobs/{tenant}/{id}`: one job — its route and reason, every provider call
//! (latency, cost, outcome), its stored result and its message as received while the jobs
//! stream still holds it (content hidden unless `[console] show_content`).

use super::super::html::{self, esc, opt, text_input, time};
use super::super::{auth::Session, ConsoleError, Shared};
use super::{given, time_filter};
use crate::job::ErrorKind;
use crate::store::console::{JobCursor, JobSearch};
use axum::extract::{Path, Query, State};
use axum::response::Html;
use axum::Extension;

const PAGE: i64 = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct SearchParams {
    pub tenant: Option<String>,
    pub id: Option<String>,
    pub feature: Option<String>,
    pub status: Option<String>,
    pub kind: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// The cursor: the last shown job's created_at (RFC 3339), tenant and id.
    pub after_t: Option<String>,
    pub after_tenant: Option<String>,
    pub after_id: Option<String>,
}

fn parse(p: &SearchParams) -> Result<JobSearch, ConsoleError> {
    let status = given(&p.status);
    if let Some(s) = &status {
        if !["running", "succeeded", "failed"].contains(&s.as_str()) {
            return Err(ConsoleError::BadRequest(format!(
                "status {s:?} is not running, succeeded or failed"
            )));
        }
    }
    let kind = given(&p.kind);
    if let Some(k) = &kind {
        if !ErrorKind::ALL.iter().any(|e| e.as_str() == k) {
            return Err(ConsoleError::BadRequest(format!(
                "kind {k:?} is not an error kind"
            )));
        }
    }
    let after = match (
        given(&p.after_t),
        given(&p.after_tenant),
        given(&p.after_id),
    ) {
        (Some(t), Some(tenant), Some(id)) => Some(JobCursor {
            created_at: chrono::DateTime::parse_from_rfc3339(&t)
                .map_err(|e| ConsoleError::BadRequest(format!("after_t: {e}")))?
                .with_timezone(&chrono::Utc),
            tenant,
            id,
        }),
        (None, None, None) => None,
        _ => {
            return Err(ConsoleError::BadRequest(
                "after_t, after_tenant and after_id go together".into(),
            ))
        }
    };
    Ok(JobSearch {
        tenant: given(&p.tenant),
        id: given(&p.id),
        feature: given(&p.feature),
        status,
        error_kind: kind,
        since: time_filter("since", &p.since)?,
        until: time_filter("until", &p.until)?,
        after,
        limit: PAGE,
    })
}

fn select(name: &str, current: Option<&str>, options: &[&str]) -> String {
    let mut out = format!("<select name=\"{name}\"><option value=\"\">any</option>");
    for o in options {
        let sel = if current == Some(*o) { " selected" } else { "" };
        out.push_str(&format!("<option{sel}>{}</option>", esc(o)));
    }
    out.push_str("</select>");
    out
}

pub async fn search(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Query(p): Query<SearchParams>,
) -> Result<Html<String>, ConsoleError> {
    let q = parse(&p)?;
    let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|e| e.as_str()).collect();
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/jobs\">{}{}{}<label>status{}</label><label>error kind{}</label>{}{}<button>Search</button></form>",
        text_input("tenant", "tenant", p.tenant.as_deref(), "acme"),
        text_input("id", "id", p.id.as_deref(), "id or prefix*"),
        text_input("feature", "feature", p.feature.as_deref(), ""),
        select("status", q.status.as_deref(), &["running", "succeeded", "failed"]),
        select("kind", q.error_kind.as_deref(), &kinds),
        text_input("since", "since", p.since.as_deref(), "24h, 2026-11-01"),
        text_input("until", "until", p.until.as_deref(), ""),
    );
    let jobs = crate::store::console::search_jobs(&c.pool, &q).await?;
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                time(j.created_at),
                esc(&j.tenant),
                format!(
                    "<a href=\"/jobs/{}/{}\">{}</a>",
                    esc(&html::seg(&j.tenant)),
                    esc(&html::seg(&j.id)),
                    esc(&j.id)
                ),
                opt(j.feature.as_deref()),
                format!("<span class=\"status-{0}\">{0}</span>", esc(&j.status)),
                opt(j.error_kind.as_deref()),
                opt(j.priority.as_deref()),
                opt(j.provider.as_deref()),
                opt(j.model.as_deref()),
                esc(&j.cost_usd.normalize().to_string()),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &[
            "created",
            "tenant",
            "id",
            "feature",
            "status",
            "error kind",
            "priority",
            "provider",
            "model",
            "cost $",
        ],
        &rows,
    ));
    if jobs.len() as i64 == PAGE {
        if let Some(last) = jobs.last() {
            let t = last
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            let link = html::query([
                ("tenant", p.tenant.as_deref().unwrap_or("")),
                ("id", p.id.as_deref().unwrap_or("")),
                ("feature", p.feature.as_deref().unwrap_or("")),
                ("status", p.status.as_deref().unwrap_or("")),
                ("kind", p.kind.as_deref().unwrap_or("")),
                ("since", p.since.as_deref().unwrap_or("")),
                ("until", p.until.as_deref().unwrap_or("")),
                ("after_t", t.as_str()),
                ("after_tenant", last.tenant.as_str()),
                ("after_id", last.id.as_str()),
            ]);
            body.push_str(&format!(
                "<p><a rel=\"next\" href=\"/jobs{}\">Next page →</a></p>",
                esc(&link)
            ));
        }
    }
    Ok(Html(html::page("Jobs", Some(&session), &body)))
}

/// The job's message while it is still in the jobs stream (waiting, running, or waiting
/// for a retry: read by the sequence its last claim stored); a failed job's dead letter
/// keeps it; a succeeded job's is gone (workers keep no copy).
async fn received(c: &Shared, j: &crate::store::console::JobDetail) -> String {
    if j.status == "failed" {
        return format!(
            "<p>Kept in <a href=\"/dlq/{}/{}\">its dead letter →</a> (until purged).</p>",
            esc(&html::seg(&j.tenant)),
            esc(&html::seg(&j.id))
        );
    }
    let gone =
        "<p class=\"muted\">Gone: a job's message leaves the jobs stream once the job is done.</p>";
    let Some(seq) = j.stream_seq.and_then(|s| u64::try_from(s).ok()) else {
        return gone.into();
    };
    let Ok(stream) = c.js.get_stream(c.names.jobs_stream()).await else {
        return gone.into();
    };
    let Ok(m) = stream.get_raw_message(seq).await else {
        return gone.into();
    };
    let job: Option<serde_json::Value> = serde_json::from_slice(&m.payload).ok();
    // The sequence is the job's own only if the message names it.
    let ours = job.as_ref().is_some_and(|v| {
        v.get("id").and_then(|i| i.as_str()) == Some(j.id.as_str())
            && v.get("tenant").and_then(|t| t.as_str()) == Some(j.tenant.as_str())
    });
    if !ours {
        return gone.into();
    }
    format!(
        "<p class=\"muted\">Still in the jobs stream (sequence {seq}, subject <code>{}</code>).</p>{}",
        esc(&m.subject),
        super::payload(job.as_ref(), None, c.cfg.console.show_content)
    )
}

pub async fn show(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Html<String>, ConsoleError> {
    let Some(j) = crate::store::console::job_detail(&c.pool, &tenant, &id).await? else {
        return Err(ConsoleError::NotFound(format!(
            "no job {id:?} for tenant {tenant:?}"
        )));
    };
    let calls = crate::store::console::job_calls(&c.pool, &tenant, &id).await?;
    let route = j.result.as_ref().and_then(|r| r.get("route"));
    let route_text = |k: &str| {
        route
            .and_then(|r| r.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let facts: Vec<(&str, String)> = vec![
        ("tenant", esc(&j.tenant)),
        ("id", esc(&j.id)),
        (
            "status",
            format!("<span class=\"status-{0}\">{0}</span>", esc(&j.status)),
        ),
        ("feature", opt(j.feature.as_deref())),
        ("user", opt(j.user_id.as_deref())),
        ("priority", opt(j.priority.as_deref())),
        ("task", opt(j.task.as_deref())),
        ("requested model", opt(j.requested_model.as_deref())),
        ("provider", opt(j.provider.as_deref())),
        ("model", opt(j.model.as_deref())),
        ("route tier", opt(route_text("tier").as_deref())),
        ("route reason", opt(route_text("reason").as_deref())),
        ("route variant", opt(route_text("variant").as_deref())),
        (
            "tokens in / cached / out",
            format!(
                "{} / {} / {}",
                j.input_tokens, j.cached_input_tokens, j.output_tokens
            ),
        ),
        ("cost $", esc(&j.cost_usd.normalize().to_string())),
        ("cache hit", j.cache_hit.to_string()),
        ("deliveries", j.deliveries.to_string()),
        ("error kind", opt(j.error_kind.as_deref())),
        ("error message", opt(j.error_message.as_deref())),
        ("created", time(j.created_at)),
        ("started", html::opt_time(j.started_at)),
        ("finished", html::opt_time(j.finished_at)),
    ];
    let rows: Vec<Vec<String>> = facts
        .into_iter()
        .map(|(k, v)| vec![format!("<strong>{}</strong>", esc(k)), v])
        .collect();
    let mut body = html::table(&["", ""], &rows);
    body.push_str("<h2>Provider calls</h2>");
    let call_rows: Vec<Vec<String>> = calls
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                esc(&a.provider),
                esc(&a.model),
                esc(&a.outcome),
                a.status_code.map_or_else(|| "—".into(), |s| s.to_string()),
                format!("{} ms", a.latency_ms),
                esc(&a.cost_usd.normalize().to_string()),
                format!("{} / {}", a.input_tokens, a.output_tokens),
                opt(a.message.as_deref()),
                time(a.created_at),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &[
            "#",
            "provider",
            "model",
            "outcome",
            "HTTP",
            "latency",
            "cost $",
            "tokens in / out",
            "message",
            "at",
        ],
        &call_rows,
    ));
    body.push_str("<h2>Output</h2>");
    match &j.output {
        Some(out) if c.cfg.console.show_content => body.push_str(&html::json_block(out)),
        Some(_) => body.push_str(&format!("<p class=\"muted\">{}</p>", esc(html::HIDDEN))),
        None => body.push_str("<p class=\"muted\">No output.</p>"),
    }
    body.push_str("<h2>Stored result (without its output)</h2>");
    match &j.result {
        Some(r) => {
            let mut r = r.clone();
            // producers' metadata may hold personal data too
            if let (false, Some(o)) = (c.cfg.console.show_content, r.as_object_mut()) {
                if o.get("metadata").is_some_and(|m| !m.is_null()) {
                    o.insert("metadata".into(), html::HIDDEN.into());
                }
            }
            body.push_str(&html::json_block(&r));
        }
        None => body.push_str("<p class=\"muted\">No result yet.</p>"),
    }
    body.push_str("<h2>Job as received</h2>");
    body.push_str(&received(&c, &j).await);
    Ok(Html(html::page(
        &format!("Job {}/{}", j.tenant, j.id),
        Some(&session),
        &body,
    )))
}
