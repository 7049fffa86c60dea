//! `/dlq`: the dead letters that match the CLI's filters (tenant, error kind, feature,
//! provider called, failed since / until), oldest first, with replay (a selection, with a
//! model / provider override) and purge (a selection, or everything that matches); each
//! action shows what it would do (the CLI's dry run) and acts only once confirmed.
//! `/dlq/{tenant}/{id}`: one dead letter. Every action runs the CLI's own code
//! (`cli::dlq::{matching, replay::execute, purge::execute}`).

use super::super::html::{self, csrf_field, esc, opt, text_input, time};
use super::super::{auth::Form, auth::Session, ConsoleError, Shared};
use super::internal;
use crate::cli::dlq::purge::{self, PurgeArgs};
use crate::cli::dlq::replay::{self, ReplayArgs};
use crate::cli::dlq::select::Dlq;
use crate::cli::dlq::{key_of, Filters};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use axum::Extension;
use std::collections::BTreeMap;

/// Rows a page of the list shows (a purge of everything that matches takes all).
const PAGE: usize = 100;

#[derive(Debug, Default, serde::Deserialize)]
pub struct DlqParams {
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub feature: Option<String>,
    pub provider: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// The list's page, from 1.
    pub page: Option<String>,
}

impl DlqParams {
    fn page(&self) -> Result<usize, ConsoleError> {
        match super::given(&self.page) {
            None => Ok(1),
            Some(p) => p.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                ConsoleError::BadRequest(format!("page: {p:?} is not a page number"))
            }),
        }
    }

    /// A link to page `n` of the same filters.
    fn page_link(&self, n: usize) -> String {
        let n = n.to_string();
        let q = html::query([
            ("tenant", self.tenant.as_deref().unwrap_or("")),
            ("kind", self.kind.as_deref().unwrap_or("")),
            ("feature", self.feature.as_deref().unwrap_or("")),
            ("provider", self.provider.as_deref().unwrap_or("")),
            ("since", self.since.as_deref().unwrap_or("")),
            ("until", self.until.as_deref().unwrap_or("")),
            ("page", n.as_str()),
        ]);
        format!("/dlq{}", esc(&q))
    }

    fn filters(&self) -> Filters {
        Filters {
            tenant: super::given(&self.tenant),
            kind: super::given(&self.kind),
            feature: super::given(&self.feature),
            since: super::given(&self.since),
            until: super::given(&self.until),
        }
    }

    fn from_form(f: &Form) -> DlqParams {
        DlqParams {
            tenant: f.get("tenant"),
            kind: f.get("kind"),
            feature: f.get("feature"),
            provider: f.get("provider_filter"),
            since: f.get("since"),
            until: f.get("until"),
            page: None,
        }
    }

    /// The filters as hidden fields (a purge of everything that matches repeats them).
    fn hidden(&self) -> String {
        [
            ("tenant", &self.tenant),
            ("kind", &self.kind),
            ("feature", &self.feature),
            ("provider_filter", &self.provider),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter_map(|(k, v)| {
            super::given(v)
                .map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(&v)))
        })
        .collect()
    }
}

fn filter_form(p: &DlqParams) -> String {
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/dlq\">{}{}{}{}{}{}<button>Filter</button></form>",
        text_input("tenant", "tenant", p.tenant.as_deref(), ""),
        text_input("error kind", "kind", p.kind.as_deref(), "providers_exhausted"),
        text_input("feature", "feature", p.feature.as_deref(), ""),
        text_input("provider called", "provider", p.provider.as_deref(), ""),
        text_input("failed since", "since", p.since.as_deref(), "24h"),
        text_input("until", "until", p.until.as_deref(), ""),
    )
}

pub async fn list(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Query(p): Query<DlqParams>,
) -> Result<Html<String>, ConsoleError> {
    let provider = super::given(&p.provider);
    let filter = p
        .filters()
        .resolve(&c.cfg, provider.as_deref())
        .map_err(|e| ConsoleError::BadRequest(format!("{e:#}")))?;
    let (dlq, letters) = crate::cli::dlq::matching(&c.cfg, &c.js, c.names.clone(), &filter)
        .await
        .map_err(internal)?;
    let page = p.page()?;
    let first = (page - 1).saturating_mul(PAGE);
    let mut body = filter_form(&p);
    let rows: Vec<Vec<String>> = letters
        .iter()
        .skip(first)
        .take(PAGE)
        .map(|d| {
            let (tenant, id) = key_of(&dlq.names, &d.subject);
            let feature = d
                .entry
                .job
                .as_ref()
                .and_then(|j| j.get("feature"))
                .and_then(|f| f.as_str());
            let key = format!("{tenant}/{id}");
            vec![
                format!(
                    "<input type=\"checkbox\" name=\"key\" value=\"{}\">",
                    esc(&key)
                ),
                esc(&tenant),
                format!(
                    "<a href=\"/dlq/{}/{}\">{}</a>",
                    esc(&html::seg(&tenant)),
                    esc(&html::seg(&id)),
                    esc(&id)
                ),
                opt(feature),
                esc(d.entry.error.kind.as_str()),
                d.entry.deliveries.to_string(),
                time(d.entry.failed_at),
                esc(&crate::cli::dlq::clip(&d.entry.error.message, 120)),
            ]
        })
        .collect();
    let pages = letters.len().div_ceil(PAGE).max(1);
    body.push_str(&format!(
        "<p>{} dead letters match{}.</p><form method=\"post\" action=\"/dlq/replay\" id=\"selection\">{}",
        letters.len(),
        if pages > 1 {
            format!(
                ", oldest first: {}–{} shown (page {page} of {pages})",
                (first + 1).min(letters.len()),
                (first + PAGE).min(letters.len())
            )
        } else {
            String::new()
        },
        csrf_field(&session)
    ));
    body.push_str(&html::table(
        &[
            "",
            "tenant",
            "id",
            "feature",
            "error kind",
            "deliveries",
            "failed at",
            "message",
        ],
        &rows,
    ));
    if !letters.is_empty() {
        body.push_str(
            "<p><label><input type=\"checkbox\" id=\"select-all\"> select all</label></p>\
             <p><label>model override <input name=\"model\" placeholder=\"auto, a tier, a model or provider/model\"></label> \
             <label>pin to provider <input name=\"provider\"></label> \
             <button>Replay selected…</button> \
             <button class=\"danger\" formaction=\"/dlq/purge\">Purge selected…</button></p>",
        );
    }
    body.push_str("</form>");
    if pages > 1 {
        let mut nav = Vec::new();
        if page > 1 {
            nav.push(format!(
                "<a rel=\"prev\" href=\"{}\">← Previous page</a>",
                p.page_link(page - 1)
            ));
        }
        if page < pages {
            nav.push(format!(
                "<a rel=\"next\" href=\"{}\">Next page →</a>",
                p.page_link(page + 1)
            ));
        }
        body.push_str(&format!("<p>{}</p>", nav.join(" · ")));
    }
    if !letters.is_empty() {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/dlq/purge\">{}{}<input type=\"hidden\" name=\"all\" value=\"1\">\
             <button class=\"danger\">Purge all {} that match…</button></form>",
            csrf_field(&session),
            p.hidden(),
            letters.len()
        ));
    }
    Ok(Html(html::page("Dead letters", Some(&session), &body)))
}

pub async fn show(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<Html<String>, ConsoleError> {
    let dlq = Dlq::open(&c.js, c.names.clone()).await.map_err(internal)?;
    let Some(d) = dlq.get(&tenant, &id).await.map_err(internal)? else {
        return Err(ConsoleError::NotFound(format!(
            "no dead letter for {tenant}/{id}"
        )));
    };
    let e = &d.entry;
    let facts = vec![
        vec!["<strong>subject</strong>".into(), esc(&e.subject)],
        vec![
            "<strong>error kind</strong>".into(),
            esc(e.error.kind.as_str()),
        ],
        vec!["<strong>message</strong>".into(), esc(&e.error.message)],
        vec![
            "<strong>deliveries</strong>".into(),
            e.deliveries.to_string(),
        ],
        vec!["<strong>failed at</strong>".into(), time(e.failed_at)],
        vec![
            "<strong>job row</strong>".into(),
            format!(
                "<a href=\"/jobs/{}/{}\">{}/{}</a>",
                esc(&html::seg(&tenant)),
                esc(&html::seg(&id)),
                esc(&tenant),
                esc(&id)
            ),
        ],
    ];
    let mut body = html::table(&["", ""], &facts);
    body.push_str("<h2>Provider calls</h2>");
    let rows: Vec<Vec<String>> = e
        .attempts
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                esc(&a.provider),
                esc(&a.model),
                esc(&a.outcome),
                format!("{} ms", a.latency_ms),
                esc(&a.cost_usd.normalize().to_string()),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &["#", "provider", "model", "outcome", "latency", "cost $"],
        &rows,
    ));
    body.push_str(&format!(
        "<h2>Replay</h2><form method=\"post\" action=\"/dlq/replay\">{}\
         <input type=\"hidden\" name=\"key\" value=\"{}\">\
         <label>model override <input name=\"model\"></label> <label>pin to provider <input name=\"provider\"></label> \
         <button>Replay…</button> <button class=\"danger\" formaction=\"/dlq/purge\">Purge…</button></form>",
        csrf_field(&session),
        esc(&format!("{tenant}/{id}"))
    ));
    body.push_str("<h2>Job as received</h2>");
    body.push_str(&super::payload(
        e.job.as_ref(),
        e.payload_b64.as_deref(),
        c.cfg.console.show_content,
    ));
    Ok(Html(html::page(
        &format!("Dead letter {tenant}/{id}"),
        Some(&session),
        &body,
    )))
}

/// The selected `tenant/id` keys, by tenant (the CLI replays ids of one tenant at once).
fn keys_by_tenant(form: &Form) -> Result<BTreeMap<String, Vec<String>>, ConsoleError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in form.all("key") {
        let Some((tenant, id)) = key.split_once('/') else {
            return Err(ConsoleError::BadRequest(format!(
                "key {key:?} is not tenant/id"
            )));
        };
        out.entry(tenant.to_string())
            .or_default()
            .push(id.to_string());
    }
    Ok(out)
}

/// The confirmation form: the same fields again, plus `confirm=yes`.
fn confirm_form(action: &str, form: &Form, session: &Session, button: &str) -> String {
    let mut out = format!(
        "<form method=\"post\" action=\"{action}\" data-confirm=\"{}\">{}",
        esc(button),
        csrf_field(session)
    );
    for (k, v) in &form.0 {
        if k != "csrf" && k != "confirm" {
            out.push_str(&format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            ));
        }
    }
    out.push_str(&format!(
        "<input type=\"hidden\" name=\"confirm\" value=\"yes\"><button class=\"danger\">{}</button> <a href=\"/dlq\">Cancel</a></form>",
        esc(button)
    ));
    out
}

fn lines(lines: &[String]) -> String {
    let rows: Vec<Vec<String>> = lines.iter().map(|l| vec![esc(l)]).collect();
    html::table(&["what"], &rows)
}

pub async fn replay(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Result<Html<String>, ConsoleError> {
    let form = Form::parse(&body, &session)?;
    let by_tenant = keys_by_tenant(&form)?;
    if by_tenant.is_empty() {
        return Err(ConsoleError::BadRequest(
            "select at least one dead letter to replay".into(),
        ));
    }
    let confirmed = form.get("confirm").as_deref() == Some("yes");
    let (mut out, mut summaries) = (Vec::new(), Vec::new());
    let mut counts = (0u64, 0u64);
    for (tenant, ids) in by_tenant {
        let args = ReplayArgs {
            ids,
            all: false,
            filters: Filters {
                tenant: Some(tenant),
                kind: None,
                feature: None,
                since: None,
                until: None,
            },
            from_provider: None,
            model: form.get("model"),
            provider: form.get("provider"),
            priority: None,
            dry_run: !confirmed,
            quiet: true,
        };
        let r = replay::execute(&c.cfg, &c.js, c.names.clone(), &args, false)
            .await
            .map_err(|e| ConsoleError::BadRequest(format!("{e:#}")))?;
        if confirmed {
            tracing::info!(who = %session.who, summary = %r.summary, "console: dead letters replayed");
        }
        out.extend(r.lines);
        summaries.push(r.summary);
        counts.0 += r.replayed;
        counts.1 += r.failed + r.not_removed;
    }
    let mut page = lines(&out);
    if confirmed && counts.1 > 0 {
        page.push_str(&format!(
            "<p class=\"error\">{} could not be replayed cleanly: see the lines above.</p>",
            counts.1
        ));
    } else if confirmed {
        page.push_str(&format!("<p class=\"ok\">{} replayed.</p>", counts.0));
    }
    page.push_str(&format!(
        "<p><strong>{}</strong></p>",
        esc(&summaries.join("; "))
    ));
    if confirmed {
        page.push_str("<p><a href=\"/dlq\">Back to the dead letters</a></p>");
        Ok(Html(html::page("Replayed", Some(&session), &page)))
    } else {
        page.push_str(&confirm_form(
            "/dlq/replay",
            &form,
            &session,
            "Replay these now",
        ));
        Ok(Html(html::page(
            "Confirm the replay",
            Some(&session),
            &page,
        )))
    }
}

pub async fn purge(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Result<Html<String>, ConsoleError> {
    let form = Form::parse(&body, &session)?;
    let confirmed = form.get("confirm").as_deref() == Some("yes");
    let everything = form.get("all").as_deref() == Some("1");
    let mut runs: Vec<PurgeArgs> = Vec::new();
    let base =
        |ids: Vec<String>, all: bool, filters: Filters, provider: Option<String>| PurgeArgs {
            ids,
            all,
            filters,
            provider,
            yes: confirmed,
            dry_run: !confirmed,
            quiet: true,
        };
    if everything {
        let p = DlqParams::from_form(&form);
        runs.push(base(
            Vec::new(),
            true,
            p.filters(),
            super::given(&p.provider),
        ));
    } else {
        for (tenant, ids) in keys_by_tenant(&form)? {
            let filters = Filters {
                tenant: Some(tenant),
                kind: None,
                feature: None,
                since: None,
                until: None,
            };
            runs.push(base(ids, false, filters, None));
        }
    }
    if runs.is_empty() {
        return Err(ConsoleError::BadRequest(
            "select at least one dead letter to purge".into(),
        ));
    }
    let (mut out, mut summaries) = (Vec::new(), Vec::new());
    let mut counts = (0u64, 0u64);
    for args in &runs {
        let r = purge::execute(&c.cfg, &c.js, c.names.clone(), args, false)
            .await
            .map_err(|e| ConsoleError::BadRequest(format!("{e:#}")))?;
        if confirmed {
            tracing::info!(who = %session.who, summary = %r.summary, "console: dead letters purged");
        }
        out.extend(r.would_delete.iter().map(|k| format!("would delete {k}")));
        summaries.push(r.summary);
        counts.0 += r.deleted;
        counts.1 += r.kept;
    }
    let mut page = if out.is_empty() {
        String::new()
    } else {
        lines(&out)
    };
    page.push_str(&format!(
        "<p><strong>{}</strong></p>",
        esc(&summaries.join("; "))
    ));
    if confirmed {
        page.push_str(&format!(
            "<p class=\"ok\">{} deleted, {} kept (gone meanwhile or newer).</p><p><a href=\"/dlq\">Back to the dead letters</a></p>",
            counts.0, counts.1
        ));
        Ok(Html(html::page("Purged", Some(&session), &page)))
    } else {
        page.push_str(&confirm_form(
            "/dlq/purge",
            &form,
            &session,
            "Delete these dead letters",
        ));
        Ok(Html(html::page("Confirm the purge", Some(&session), &page)))
    }
}
