//! `/spend`: cost by the dimensions asked for (tenant, feature, model … as `report costs
//! --by`), the same numbers `report costs` prints (`store::reports::costs`), a bar chart
//! of cost per day drawn here as SVG, and `/spend/download?format=csv|json`: the bytes
//! `report costs --format csv|json` prints for the same filters.

use super::super::html::{self, esc, text_input};
use super::super::{auth::Session, ConsoleError, Shared};
use super::{given, time_filter};
use crate::cli::report::{cost_table, parse_dimensions};
use crate::store::reports::{costs, CostDimension, CostLine, CostQuery};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

/// `report costs`' default grouping.
const DEFAULT_BY: &str = "tenant,feature,model";

#[derive(Debug, Default, serde::Deserialize)]
pub struct SpendParams {
    pub by: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub tenant: Option<String>,
    pub format: Option<String>,
}

struct Parsed {
    dims: Vec<CostDimension>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    tenant: Option<String>,
}

fn parse(p: &SpendParams) -> Result<Parsed, ConsoleError> {
    let by = given(&p.by).unwrap_or_else(|| DEFAULT_BY.to_string());
    Ok(Parsed {
        dims: parse_dimensions(&by).map_err(|e| ConsoleError::BadRequest(format!("{e:#}")))?,
        since: time_filter("since", &p.since)?,
        until: time_filter("until", &p.until)?,
        tenant: given(&p.tenant),
    })
}

async fn lines(
    c: &Shared,
    q: &Parsed,
    dims: &[CostDimension],
) -> Result<Vec<CostLine>, ConsoleError> {
    Ok(costs(
        &c.pool,
        &CostQuery {
            by: dims,
            since: q.since,
            until: q.until,
            tenant: q.tenant.as_deref(),
        },
    )
    .await?)
}

/// Bars of cost per day, heights in exact decimal proportion to the largest day, each
/// labelled with its cost (two significant digits; the exact sum in its tooltip). Days
/// between the first and the last without a cost row get an empty bar.
pub fn chart(days: &[(String, Decimal)]) -> String {
    const H: u32 = 160;
    const TOP: u32 = 16;
    const BAR: u32 = 40;
    const PITCH: u32 = BAR + 16;
    let days = with_gaps(days);
    let max = days.iter().map(|(_, c)| *c).max().unwrap_or(Decimal::ZERO);
    let width = (days.len() as u32).max(1) * PITCH + 10;
    let height = TOP + H + 30;
    let mut out = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"cost per day\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\
         <line x1=\"5\" x2=\"{}\" y1=\"{}\" y2=\"{}\"></line>",
        width - 5,
        TOP + H,
        TOP + H
    );
    for (i, (day, cost)) in days.iter().enumerate() {
        let h = if max > Decimal::ZERO {
            (*cost * Decimal::from(H) / max)
                .round()
                .to_u32()
                .unwrap_or(0)
        } else {
            0
        };
        let x = 10 + i as u32 * PITCH;
        let mid = x + BAR / 2;
        let short = cost.round_sf(2).unwrap_or(*cost).normalize();
        out.push_str(&format!(
            "<g><title>{} ${}</title><rect x=\"{x}\" y=\"{}\" width=\"{BAR}\" height=\"{h}\"></rect>\
             <text class=\"value\" x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">${}</text>\
             <text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\">{}</text></g>",
            esc(day),
            esc(&cost.normalize().to_string()),
            TOP + H - h,
            TOP + H - h - 4,
            esc(&short.to_string()),
            TOP + H + 16,
            esc(day.get(5..).unwrap_or(day))
        ));
    }
    out.push_str("</svg>");
    out
}

/// `days` (ascending `YYYY-MM-DD`) with a zero for each missing day in between; as given
/// when a day does not parse.
fn with_gaps(days: &[(String, Decimal)]) -> Vec<(String, Decimal)> {
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let mut out: Vec<(String, Decimal)> = Vec::with_capacity(days.len());
    for (day, cost) in days {
        if let (Some((last, _)), Some(this)) = (out.last(), parse(day)) {
            if let Some(mut d) = parse(last).and_then(|l| l.succ_opt()) {
                // At most a year of empty bars (the filters bound the range).
                while d < this && out.len() < 366 {
                    out.push((d.format("%Y-%m-%d").to_string(), Decimal::ZERO));
                    d = match d.succ_opt() {
                        Some(n) => n,
                        None => break,
                    };
                }
            }
        }
        out.push((day.clone(), *cost));
    }
    out
}

pub async fn show(
    State(c): State<Shared>,
    Extension(session): Extension<Session>,
    Query(p): Query<SpendParams>,
) -> Result<Html<String>, ConsoleError> {
    let q = parse(&p)?;
    let by = given(&p.by).unwrap_or_else(|| DEFAULT_BY.to_string());
    let mut body = format!(
        "<form class=\"filters\" method=\"get\" action=\"/spend\">{}{}{}{}<button>Show</button></form>",
        text_input("group by", "by", Some(&by), DEFAULT_BY),
        text_input("since", "since", p.since.as_deref(), "30d, 2026-11-01"),
        text_input("until", "until", p.until.as_deref(), ""),
        text_input("tenant", "tenant", p.tenant.as_deref(), ""),
    );
    let per_day = lines(&c, &q, &[CostDimension::Day]).await?;
    let days: Vec<(String, Decimal)> = per_day
        .iter()
        .map(|l| (l.group.first().cloned().unwrap_or_default(), l.cost_usd))
        .collect();
    body.push_str("<h2>Cost per day (UTC)</h2>");
    body.push_str(&chart(&days));
    let grouped = lines(&c, &q, &q.dims).await?;
    let table = cost_table(&q.dims, &grouped);
    let total: Decimal = grouped.iter().map(|l| l.cost_usd).sum();
    body.push_str(&format!(
        "<h2>Cost by {}</h2><p>total ${}</p>",
        esc(&by),
        esc(&total.normalize().to_string())
    ));
    let headers: Vec<&str> = table.columns.iter().map(|(n, _)| n.as_str()).collect();
    let rows: Vec<Vec<String>> = table
        .rows
        .iter()
        .map(|r| r.iter().map(|cell| esc(cell)).collect())
        .collect();
    body.push_str(&html::table(&headers, &rows));
    let keep = |format: &str| {
        html::query([
            ("by", by.as_str()),
            ("since", p.since.as_deref().unwrap_or("")),
            ("until", p.until.as_deref().unwrap_or("")),
            ("tenant", p.tenant.as_deref().unwrap_or("")),
            ("format", format),
        ])
    };
    body.push_str(&format!(
        "<p>Download: <a href=\"/spend/download{}\">CSV</a> · <a href=\"/spend/download{}\">JSON lines</a> (as <code>report costs --format csv|json</code>)</p>",
        esc(&keep("csv")),
        esc(&keep("json"))
    ));
    Ok(Html(html::page("Spend", Some(&session), &body)))
}

pub async fn download(
    State(c): State<Shared>,
    Query(p): Query<SpendParams>,
) -> Result<Response, ConsoleError> {
    let format = given(&p.format).unwrap_or_else(|| "csv".into());
    let (mime, ext) = match format.as_str() {
        "csv" => ("text/csv; charset=utf-8", "csv"),
        "json" => ("application/x-ndjson; charset=utf-8", "jsonl"),
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "format {other:?} is not csv or json"
            )))
        }
    };
    let q = parse(&p)?;
    let grouped = lines(&c, &q, &q.dims).await?;
    let text = cost_table(&q.dims, &grouped).render(&format);
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"switchyard-costs.{ext}\""),
            ),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_in_proportion_and_labels_escaped() {
        let svg = chart(&[
            ("2026-12-01".into(), Decimal::new(5, 1)),
            ("2026-12-02".into(), Decimal::ONE),
            ("<x>".into(), Decimal::ZERO),
        ]);
        assert!(svg.contains("height=\"80\""), "{svg}");
        assert!(svg.contains("height=\"160\""), "{svg}");
        assert!(svg.contains("height=\"0\""), "{svg}");
        assert!(!svg.contains("<x>") && svg.contains("&lt;x&gt;"), "{svg}");
        assert!(chart(&[]).starts_with("<svg"));
    }

    #[test]
    fn missing_days_get_empty_bars_and_values_are_labelled() {
        let svg = chart(&[
            ("2026-12-01".into(), Decimal::new(123_456, 6)),
            ("2026-12-04".into(), Decimal::ONE),
        ]);
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert!(svg.contains(">12-02<") && svg.contains(">12-03<"), "{svg}");
        assert!(
            svg.contains(">$0.12<") && svg.contains("$0.123456</title>"),
            "{svg}"
        );
    }
}
