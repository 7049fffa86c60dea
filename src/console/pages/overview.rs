//! `/`: the backlog per priority and tenant (with the oldest waiting job's age), the last
//! hour's throughput and failures, the workers heard and their breakers
//! ([`super::workers`]), and every budget's use.

use super::super::html::{self, esc};
use super::super::{auth::Session, ConsoleError, Shared};
use axum::extract::State;
use axum::response::Html;
use axum::Extension;
use chrono::Utc;

pub async fn show(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
) -> Result<Html<String>, ConsoleError> {
    let mut body = String::new();
    body.push_str("<h2>Backlog</h2>");
    match crate::telemetry::backlog::read(&c.js, &c.names, c.cfg.scheduling.fair).await {
        Ok(b) => {
            let rows: Vec<Vec<String>> = b
                .priorities
                .iter()
                .map(|p| {
                    vec![
                        esc(p.priority.as_str()),
                        format!("<span class=\"num\">{}</span>", p.pending),
                        p.ack_pending.to_string(),
                        format!("{:.1} s", p.oldest_age_s),
                    ]
                })
                .collect();
            body.push_str(&html::table(
                &["priority", "pending", "held by workers", "oldest waiting"],
                &rows,
            ));
            body.push_str(&format!(
                "<p><a href=\"/dlq\">{} dead letters</a></p>",
                b.dead_letters
            ));
        }
        Err(e) => body.push_str(&format!(
            "<p class=\"error\">cannot read the backlog from NATS: {}</p>",
            esc(&e.to_string())
        )),
    }
    if let Ok(t) = tenant_backlog(&c).await {
        body.push_str("<h2>Backlog by tenant</h2>");
        let rows: Vec<Vec<String>> = t
            .iter()
            .map(|b| {
                vec![
                    esc(b.priority.as_str()),
                    esc(&b.tenant),
                    b.messages.to_string(),
                    format!("{:.0} s", b.oldest_age_s),
                ]
            })
            .collect();
        body.push_str(&html::table(
            &["priority", "tenant", "jobs waiting or held", "oldest"],
            &rows,
        ));
    }
    let hour =
        crate::store::console::throughput(&c.pool, Utc::now() - chrono::Duration::hours(1)).await?;
    body.push_str(&format!(
        "<h2>Last hour</h2><div class=\"cards\">\
         <div class=\"card\"><div class=\"n status-succeeded\">{}</div>succeeded</div>\
         <div class=\"card\"><div class=\"n status-failed\">{}</div>failed</div>\
         <div class=\"card\"><div class=\"n\">{}</div>running now</div>\
         <div class=\"card\"><div class=\"n\">${}</div>spent</div></div>",
        hour.succeeded,
        hour.failed,
        hour.running,
        esc(&hour.cost_usd.normalize().to_string())
    ));
    if !hour.failures_by_kind.is_empty() {
        let rows: Vec<Vec<String>> = hour
            .failures_by_kind
            .iter()
            .map(|(k, n)| {
                vec![
                    format!(
                        "<a href=\"/jobs{}\">{}</a>",
                        esc(&html::query([("status", "failed"), ("kind", k.as_str())])),
                        esc(k)
                    ),
                    n.to_string(),
                ]
            })
            .collect();
        body.push_str(&html::table(&["error kind", "failed jobs"], &rows));
    }
    let now = Utc::now();
    body.push_str(&super::workers::section(
        &c.cfg,
        c.workers.since(),
        &c.workers.list(now),
        now,
    ));
    body.push_str("<h2>Budgets</h2>");
    let budgets = crate::store::budget_admin::budget_status(&c.pool, None, Utc::now()).await?;
    let rows: Vec<Vec<String>> = budgets
        .iter()
        .map(|b| {
            vec![
                esc(&b.tenant),
                html::opt(b.feature.as_deref()),
                esc(&b.period),
                esc(&b.limit_usd.normalize().to_string()),
                esc(&b.spent_usd.normalize().to_string()),
                esc(&b.reserved_usd.normalize().to_string()),
                format!("{}%", esc(&b.used_pct().normalize().to_string())),
                esc(&b.policy),
            ]
        })
        .collect();
    body.push_str(&html::table(
        &[
            "tenant",
            "feature",
            "period",
            "limit $",
            "spent $",
            "reserved $",
            "used",
            "policy",
        ],
        &rows,
    ));
    Ok(Html(html::page("Overview", Some(&session), &body)))
}

/// The backlog per priority and tenant, as `switchyard queue` and the metrics read it.
async fn tenant_backlog(
    c: &super::super::Console,
) -> Result<Vec<crate::queue::backlog::TenantBacklog>, Box<dyn std::error::Error>> {
    let stream = c.js.get_stream(c.names.jobs_stream()).await?;
    Ok(crate::queue::backlog::read(&stream, &c.names.prefix).await?)
}
