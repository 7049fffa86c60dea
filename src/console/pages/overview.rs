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
    body.push_str(&minutes_chart(&hour.buckets, 60));
    body.push_str(&format!(
        "<p class=\"muted legend\">Jobs finished per {} minutes: \
         <span class=\"status-succeeded\">■</span> succeeded, \
         <span class=\"status-failed\">■</span> failed.</p>",
        60 / crate::store::console::BUCKETS
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

/// Jobs finished per slice of the last `minutes`: succeeded bars with the failed stacked
/// on top, oldest slice first, labelled in minutes ago (no clock time: no zone to convert).
pub fn minutes_chart(buckets: &[(i64, i64)], minutes: usize) -> String {
    const H: i64 = 90;
    const BAR: usize = 22;
    const PITCH: usize = BAR + 6;
    let n = buckets.len().max(1);
    let step = minutes / n;
    let max = buckets
        .iter()
        .map(|(ok, f)| ok + f)
        .max()
        .unwrap_or(0)
        .max(1);
    let width = n * PITCH + 20;
    let mut out = format!(
        "<svg class=\"chart minutes\" role=\"img\" aria-label=\"jobs finished per {step} minutes\" \
         xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\">\
         <line x1=\"5\" x2=\"{}\" y1=\"{}\" y2=\"{}\"></line>",
        H + 36,
        H + 36,
        width - 5,
        H + 10,
        H + 10
    );
    for (i, &(ok, failed)) in buckets.iter().enumerate() {
        let x = 10 + i * PITCH;
        let h_ok = ok * H / max;
        let h_failed = (ok + failed) * H / max - h_ok;
        let ago = minutes - i * step;
        out.push_str(&format!(
            "<g><title>{ago}–{} min ago: {ok} succeeded, {failed} failed</title>\
             <rect class=\"ok\" x=\"{x}\" y=\"{}\" width=\"{BAR}\" height=\"{h_ok}\"></rect>\
             <rect class=\"failed\" x=\"{x}\" y=\"{}\" width=\"{BAR}\" height=\"{h_failed}\"></rect></g>",
            ago - step,
            H + 10 - h_ok,
            H + 10 - h_ok - h_failed,
        ));
        if i % 3 == 0 {
            out.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\">−{ago} min</text>",
                H + 26
            ));
        }
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text></svg>",
        width - 8,
        H + 26
    ));
    out
}

/// The backlog per priority and tenant, as `switchyard queue` and the metrics read it.
async fn tenant_backlog(
    c: &super::super::Console,
) -> Result<Vec<crate::queue::backlog::TenantBacklog>, Box<dyn std::error::Error>> {
    let stream = c.js.get_stream(c.names.jobs_stream()).await?;
    Ok(crate::queue::backlog::read(&stream, &c.names.prefix).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_chart_stacks_failures_on_successes_in_proportion() {
        let mut b = vec![(0, 0); 12];
        b[0] = (9, 0);
        b[11] = (3, 6);
        let svg = minutes_chart(&b, 60);
        assert_eq!(svg.matches("<rect").count(), 24, "{svg}");
        // The fullest slices are the whole height; 3 of 9 is a third.
        assert!(
            svg.contains("class=\"ok\" x=\"10\" y=\"10\" width=\"22\" height=\"90\""),
            "{svg}"
        );
        assert!(svg.contains("height=\"30\"></rect><rect class=\"failed\" x=\"318\" y=\"10\" width=\"22\" height=\"60\""), "{svg}");
        assert!(
            svg.contains("60–55 min ago: 9 succeeded, 0 failed"),
            "{svg}"
        );
        assert!(svg.contains("5–0 min ago: 3 succeeded, 6 failed"), "{svg}");
        assert!(minutes_chart(&[], 60).starts_with("<svg"));
    }
}
