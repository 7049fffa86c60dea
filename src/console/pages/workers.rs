//! The overview's workers and breakers, from the heartbeats the console hears
//! ([`crate::console::workers`]): each worker (last heard, live or not) and, per
//! provider+model, each live worker's breaker.

use super::super::html::{self, esc};
use super::super::workers::Seen;
use crate::config::Config;
use crate::ratelimit::ReportBreaker;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// How bad a breaker looks, worst last (the order of a row's summary).
fn rank(state: &str) -> u8 {
    match state {
        "open" => 3,
        "half_open" => 2,
        "closed" => 1, // cooling down after a 429
        _ => 0,
    }
}

fn label(b: &ReportBreaker) -> &str {
    match b.state.as_str() {
        "closed" if b.cool_until_ms.is_some() => "cooling down",
        s => s,
    }
}

fn at(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(|| "—".into(), html::time)
}

fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    if s < 120 {
        format!("{s} s ago")
    } else {
        format!("{} min ago", s / 60)
    }
}

/// A worker heard recently enough to count as a member (as the workers count each other).
fn live(cfg: &Config, now: DateTime<Utc>, w: &Seen) -> bool {
    let timeout = i64::try_from(cfg.ratelimit.member_timeout_ms).unwrap_or(i64::MAX);
    !w.leaving && (now - w.heard).num_milliseconds() <= timeout
}

/// The "Workers" and "Breakers" sections of the overview.
pub fn section(cfg: &Config, since: DateTime<Utc>, heard: &[Seen], now: DateTime<Utc>) -> String {
    let mut out = String::from("<h2>Workers</h2>");
    if heard.is_empty() {
        out.push_str(&format!(
            "<p class=\"empty\">No worker heard since the console started ({}); workers \
             announce themselves every {} ms.</p>",
            html::time(since),
            cfg.ratelimit.heartbeat_ms
        ));
    } else {
        let rows: Vec<Vec<String>> = heard
            .iter()
            .map(|w| {
                let state = if w.leaving {
                    "<span class=\"muted\">stopped</span>".to_string()
                } else if live(cfg, now, w) {
                    "<span class=\"ok\">live</span>".to_string()
                } else {
                    "<span class=\"error\">silent</span>".to_string()
                };
                let breakers = match &w.breakers {
                    None => "<span class=\"muted\">not reported (an older worker)</span>".into(),
                    Some(b) if b.is_empty() => "all closed".into(),
                    Some(b) => format!("{} not closed", b.len()),
                };
                vec![
                    format!("<code>{}</code>", esc(&w.id)),
                    html::opt(w.host.as_deref()),
                    format!(
                        "{} <span class=\"muted\">{}</span>",
                        html::time(w.heard),
                        ago(now, w.heard)
                    ),
                    state,
                    breakers,
                ]
            })
            .collect();
        out.push_str(&html::table(
            &["worker", "host", "last heard", "state", "breakers"],
            &rows,
        ));
    }
    out.push_str(&breakers(cfg, heard, now));
    out
}

/// One row per configured provider+model (and any other a worker reported): the worst
/// state among the live workers that report breakers, and each one's that is not closed.
fn breakers(cfg: &Config, heard: &[Seen], now: DateTime<Utc>) -> String {
    let reporting: Vec<(&Seen, &Vec<ReportBreaker>)> = heard
        .iter()
        .filter(|w| live(cfg, now, w))
        .filter_map(|w| w.breakers.as_ref().map(|b| (w, b)))
        .collect();
    let mut models: BTreeMap<(&str, &str), Vec<(&str, &ReportBreaker)>> = cfg
        .models
        .iter()
        .map(|m| ((m.provider.as_str(), m.name.as_str()), Vec::new()))
        .collect();
    for (w, bs) in &reporting {
        for b in bs.iter() {
            models
                .entry((b.provider.as_str(), b.model.as_str()))
                .or_default()
                .push((w.id.as_str(), b));
        }
    }
    let n = reporting.len();
    let mut rows: Vec<(u8, Vec<String>)> = models
        .into_iter()
        .map(|((provider, model), notes)| {
            let worst = notes.iter().map(|(_, b)| b).max_by_key(|b| rank(&b.state));
            let summary = match worst {
                _ if n == 0 => {
                    "<span class=\"muted\">unknown: no live worker reports</span>".into()
                }
                None => format!("<span class=\"breaker-closed\">closed</span> on all {n}"),
                Some(b) => format!(
                    "<span class=\"breaker-{}\">{}</span> on {} of {n}",
                    esc(&b.state),
                    esc(label(b)),
                    notes.len()
                ),
            };
            let detail: Vec<String> = notes.iter().map(|(id, b)| note(id, b)).collect();
            let r = worst.map_or(0, |b| rank(&b.state));
            (
                r,
                vec![esc(provider), esc(model), summary, detail.join("<br>")],
            )
        })
        .collect();
    // The unwell first, each group in provider, model order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    format!(
        "<h2>Breakers</h2>{}",
        html::table(
            &[
                "provider",
                "model",
                "state (live workers)",
                "where not closed"
            ],
            &rows
        )
    )
}

/// One worker's breaker that is not closed: state, since when, why, until when.
fn note(id: &str, b: &ReportBreaker) -> String {
    let mut s = format!(
        "<code>{}</code> <span class=\"breaker-{}\">{}</span> since {}",
        esc(id),
        esc(&b.state),
        esc(label(b)),
        at(b.since_ms)
    );
    if !b.reason.is_empty() {
        s.push_str(&format!(
            " <span class=\"muted\">({})</span>",
            esc(&b.reason)
        ));
    } else if b.failures > 0 {
        s.push_str(&format!(
            " <span class=\"muted\">({} failures in a row)</span>",
            b.failures
        ));
    }
    if let Some(u) = b.open_until_ms {
        s.push_str(&format!("; probed after {}", at(u)));
    }
    if let Some(u) = b.cool_until_ms {
        s.push_str(&format!("; cooling down until {}", at(u)));
    }
    s
}
