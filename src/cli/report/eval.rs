//! `switchyard report eval`: shadow evaluation per route, primary and candidate model
//! (`store::shadow::eval_report`): how many were compared, the share that agreed, how
//! many failed, and what the candidate (and its judge) cost against the primary.

use super::table::{Kind, Table};
use crate::store::shadow::EvalLine;
use rust_decimal::Decimal;

/// Which evaluations, printed how.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// From this time on (by when the evaluation started): RFC 3339, a date, or a span
    /// back from now (24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this route (a `[[shadow.routes]]` name).
    #[arg(long)]
    pub route: Option<String>,
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    pub format: String,
}

/// A percentage of `part` in `whole`, two places; empty when `whole` is 0.
fn pct(part: Decimal, whole: Decimal) -> String {
    if whole.is_zero() {
        return String::new();
    }
    (part * Decimal::ONE_HUNDRED / whole)
        .round_dp(2)
        .normalize()
        .to_string()
}

/// The report: one row per route, primary and candidate model.
/// `agree_pct` = agreed / compared (failed ones are not in it), `cost_diff_usd` =
/// candidate − primary over the evaluations that ended, `cost_diff_pct` of the primary.
pub fn eval_table(lines: &[EvalLine]) -> Table {
    let mut t = Table::new([
        ("route", Kind::Text),
        ("primary_model", Kind::Text),
        ("candidate_model", Kind::Text),
        ("evals", Kind::Count),
        ("compared", Kind::Count),
        ("agreed", Kind::Count),
        ("failed", Kind::Count),
        ("agree_pct", Kind::Decimal),
        ("mean_similarity", Kind::Decimal),
        ("primary_cost_usd", Kind::Decimal),
        ("candidate_cost_usd", Kind::Decimal),
        ("judge_cost_usd", Kind::Decimal),
        ("cost_diff_usd", Kind::Decimal),
        ("cost_diff_pct", Kind::Decimal),
    ]);
    for l in lines {
        let diff = l.candidate_cost_usd - l.primary_cost_usd;
        t.rows.push(vec![
            l.route.clone(),
            l.primary_model.clone(),
            l.candidate_model.clone(),
            l.evals.to_string(),
            l.compared.to_string(),
            l.agreed.to_string(),
            l.failed.to_string(),
            pct(Decimal::from(l.agreed), Decimal::from(l.compared)),
            l.mean_similarity
                .map(|s| s.normalize().to_string())
                .unwrap_or_default(),
            l.primary_cost_usd.normalize().to_string(),
            l.candidate_cost_usd.normalize().to_string(),
            l.judge_cost_usd.normalize().to_string(),
            diff.normalize().to_string(),
            pct(diff, l.primary_cost_usd),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_and_cost_difference() {
        let line = EvalLine {
            route: "r".into(),
            primary_model: "gpt-4o".into(),
            candidate_model: "gpt-4o-mini".into(),
            evals: 4,
            compared: 3,
            agreed: 2,
            failed: 1,
            primary_cost_usd: Decimal::new(40, 4),
            candidate_cost_usd: Decimal::new(10, 4),
            judge_cost_usd: Decimal::ZERO,
            mean_similarity: None,
        };
        let t = eval_table(&[line]);
        let row = &t.rows[0];
        assert_eq!(row[7], "66.67");
        assert_eq!(row[8], "");
        assert_eq!(row[12], "-0.003");
        assert_eq!(row[13], "-75");
        assert_eq!(pct(Decimal::ONE, Decimal::ZERO), "");
    }
}
