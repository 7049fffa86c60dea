//! `switchyard submit --estimate FILE`: what a JSONL file will cost and how long it will
//! take, before anything is published. Each line is parsed as the worker would, routed
//! by today's config (the router's first candidate: no budget pressure, no latency
//! reordering), its input counted (the provider's tokenizer for OpenAI models, the
//! worker's estimate otherwise), its output taken as the mean output of the model's
//! succeeded calls over the last `--history-days` (from `cost_rows`; a model with none:
//! the mean over every model's calls), or, with no history at all, `--output-share` of
//! the job's `max_tokens`. Money per tier and model and in
//! total (`cost::cost_of`, exact decimals); time: per provider, the larger of its
//! requests over `rpm` and its tokens over `tpm` (the pool's limits are shared by every
//! worker, so more workers do not make it shorter). Printed as `report costs` prints.

use super::report::table::{Kind, Table};
use crate::config::{Config, ProviderKind};
use crate::job::names::is_valid_tenant;
use crate::job::{parse_job, Priority, Usage};
use crate::queue::Names;
use crate::router::{RouteContext, Router};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;

/// Options of `submit` that the estimate reads.
pub struct EstimateArgs<'a> {
    pub text: &'a str,
    pub priority: Priority,
    pub tenant: &'a str,
    pub format: &'a str,
    pub history_days: u32,
    /// Share of `max_tokens` assumed as output where no history exists (0..=1).
    pub output_share: Decimal,
}

#[derive(Default)]
struct Line {
    provider: String,
    jobs: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: Decimal,
    from_history: bool,
}

pub async fn run(cfg: &Config, args: EstimateArgs<'_>) -> anyhow::Result<ExitCode> {
    if args.output_share < Decimal::ZERO || args.output_share > Decimal::ONE {
        anyhow::bail!("--output-share must be between 0 and 1");
    }
    let names = Names::new(&cfg.nats.prefix);
    let rules = cfg.parse_rules();
    let router = Router::new(cfg);
    let history = history(cfg, args.history_days).await;
    // A model without history of its own: the mean output of every model's calls.
    let overall = {
        let (calls, sum) = history.values().fold((0i64, 0f64), |(n, s), &(c, mean)| {
            (n + c, s + mean * c as f64)
        });
        (calls > 0).then(|| sum / calls as f64)
    };
    let mut lines: BTreeMap<(usize, String), Line> = BTreeMap::new();
    let mut refused: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut per_provider: HashMap<String, (u64, u64)> = HashMap::new();
    for text in args.text.lines().filter(|l| !l.trim().is_empty()) {
        let tenant = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("tenant").and_then(|t| t.as_str()).map(str::to_string))
            .filter(|t| is_valid_tenant(t))
            .unwrap_or_else(|| args.tenant.to_string());
        let subject = names.jobs_subject(args.priority, &tenant);
        let job = match parse_job(text.as_bytes(), &subject, 0, &rules) {
            Ok(p) => p.job,
            Err(f) => {
                let e = refused
                    .entry(f.error.kind.as_str().to_string())
                    .or_default();
                e.0 += 1;
                e.1.clone_from(&f.error.message);
                continue;
            }
        };
        let estimate = crate::tokens::estimate_input_tokens(&job);
        let plan = match router.plan(&job, estimate, RouteContext::new(args.priority)) {
            Ok(p) => p,
            Err(e) => {
                let r = refused.entry(e.kind.as_str().to_string()).or_default();
                r.0 += 1;
                r.1 = e.message;
                continue;
            }
        };
        let Some(c) = plan.candidates.first() else {
            continue;
        };
        let m = &c.model;
        let openai_like = cfg.providers.iter().any(|p| {
            p.name == m.provider
                && matches!(
                    p.kind,
                    ProviderKind::Openai | ProviderKind::OpenaiCompatible
                )
        });
        let input = if openai_like {
            crate::tokens::openai_input_tokens(&job, &m.upstream)
        } else {
            c.input_tokens
        };
        let (output, from_history) = match history
            .get(&(m.provider.clone(), m.name.clone()))
            .map(|&(_, mean)| mean)
            .or(overall)
        {
            Some(mean) => ((mean.round() as u64).min(u64::from(c.max_tokens)), true),
            None => (
                rust_decimal::prelude::ToPrimitive::to_u64(
                    &(Decimal::from(c.max_tokens) * args.output_share).round(),
                )
                .unwrap_or(0),
                false,
            ),
        };
        let usage = Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        };
        let l = lines.entry((m.tier.rank(), m.name.clone())).or_default();
        l.provider.clone_from(&m.provider);
        l.jobs += 1;
        l.input_tokens += input;
        l.output_tokens += output;
        l.cost += crate::cost::cost_of(m, &usage);
        l.from_history = from_history;
        let p = per_provider.entry(m.provider.clone()).or_default();
        p.0 += 1;
        p.1 += input + output;
    }
    let minutes: HashMap<&str, Option<Decimal>> = per_provider
        .iter()
        .map(|(name, &(requests, tokens))| {
            (name.as_str(), limit_minutes(cfg, name, requests, tokens))
        })
        .collect();

    let mut t = Table::new([
        ("tier", Kind::Text),
        ("model", Kind::Text),
        ("jobs", Kind::Count),
        ("input_tokens", Kind::Count),
        ("output_tokens", Kind::Count),
        ("output_basis", Kind::Text),
        ("cost_usd", Kind::Decimal),
        ("limit_minutes", Kind::Decimal),
    ]);
    let (mut jobs, mut input, mut output, mut total) = (0, 0, 0, Decimal::ZERO);
    for ((_, name), l) in &lines {
        let tier = cfg
            .models
            .iter()
            .find(|m| &m.name == name)
            .map_or("", |m| m.tier.as_str());
        t.rows.push(vec![
            tier.to_string(),
            format!("{}/{name}", l.provider),
            l.jobs.to_string(),
            l.input_tokens.to_string(),
            l.output_tokens.to_string(),
            if l.from_history {
                "history"
            } else {
                "max_tokens share"
            }
            .to_string(),
            l.cost.normalize().to_string(),
            minutes
                .get(l.provider.as_str())
                .copied()
                .flatten()
                .map(|d| d.round_dp(1).to_string())
                .unwrap_or_default(),
        ]);
        jobs += l.jobs;
        input += l.input_tokens;
        output += l.output_tokens;
        total += l.cost;
    }
    // The providers work in parallel: the file takes as long as the slowest.
    let longest = minutes.values().copied().flatten().max();
    t.total = Some(vec![
        "total".into(),
        String::new(),
        jobs.to_string(),
        input.to_string(),
        output.to_string(),
        String::new(),
        total.normalize().to_string(),
        longest
            .map(|d| d.round_dp(1).to_string())
            .unwrap_or_default(),
    ]);
    t.print(args.format);
    for (kind, (n, example)) in &refused {
        eprintln!("{n} job(s) would fail as {kind} without a call (e.g. {example})");
    }
    if longest.is_none() && jobs > 0 {
        eprintln!("no rpm/tpm configured for these providers: the limits imply no time");
    }
    Ok(ExitCode::SUCCESS)
}

/// Minutes `provider`'s `rpm` / `tpm` need for `requests` calls of `tokens` tokens (the
/// larger); `None` when it has neither.
fn limit_minutes(cfg: &Config, provider: &str, requests: u64, tokens: u64) -> Option<Decimal> {
    let p = cfg.providers.iter().find(|p| p.name == provider)?;
    let by_requests = p
        .rpm
        .map(|rpm| Decimal::from(requests) / Decimal::from(rpm.max(1)));
    let by_tokens = p
        .tpm
        .map(|tpm| Decimal::from(tokens) / Decimal::from(tpm.max(1)));
    match (by_requests, by_tokens) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Mean output tokens per (provider, model) over the last `days`; empty (with a note) when
/// Postgres cannot be read.
async fn history(cfg: &Config, days: u32) -> HashMap<(String, String), (i64, f64)> {
    if days == 0 {
        return HashMap::new();
    }
    let since = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
    let read = async {
        let pool = crate::connect::postgres(&cfg.postgres, 1).await?;
        Ok::<_, anyhow::Error>(
            crate::store::output_history::mean_output_tokens(&pool, since).await?,
        )
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            eprintln!("note: no output history ({e}): output assumed from max_tokens");
            HashMap::new()
        }
        Err(_) => {
            eprintln!("note: Postgres did not answer: output assumed from max_tokens");
            HashMap::new()
        }
    }
}
