//! `switchyard dlq replay`: publish dead-lettered jobs again, by ids or by filter, with
//! optional overrides (`--model`, `--provider`, `--priority`), a progress bar and a
//! summary.
//!
//! Each job goes through the normal path: it is published as received (plus the
//! overrides) to its priority's subject, then exactly the dead letter it came from is
//! deleted, by its stream sequence (publishing first: a replay cut short leaves the dead
//! letter, never loses the job). What keeps a replay from running a job twice:
//! - a job whose row is `succeeded` (it ran since) or `running` (it was published again
//!   already and runs now) is skipped, and the worker never calls again for a
//!   `(tenant, id)` that has a committed succeeded result anyway;
//! - the `Nats-Msg-Id` is `<tenant>:<id>:replay:<dead letter's sequence>`, so two replays
//!   of the same dead letter (two operators, a replay run twice before the first one
//!   deleted it) publish once within the jobs stream's duplicate window; the second is
//!   counted as a duplicate;
//! - a replayed job that fails again gets a new dead letter (a new sequence), which a
//!   later replay may replay again: that is a new failure, not a double run.

use super::select::{DeadLetter, Dlq, Selected, FETCH_WINDOW};
use super::{check_ids_or_all, open_and_select, Filters};
use crate::config::{Config, Tier};
use crate::job::names::is_valid_tenant;
use crate::job::{Job, Priority, SubjectInfo};
use crate::queue::publish::remove_dead_letter;
use crate::queue::Names;
use crate::router::{RouteContext, Router};
use async_nats::jetstream;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Job ids to replay (with --tenant).
    pub ids: Vec<String>,
    /// Replay every dead letter that matches the filters.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    #[command(flatten)]
    pub filters: Filters,
    /// Only jobs that called this provider (any outcome).
    #[arg(long)]
    pub from_provider: Option<String>,
    /// Replay with this `model` instead of the job's own: auto, a tier, a model name or
    /// alias, or <provider>/<model>.
    #[arg(long)]
    pub model: Option<String>,
    /// Pin the replayed jobs to this provider (their `providers` become {"allow": [P]}).
    #[arg(long)]
    pub provider: Option<String>,
    /// Publish to this priority instead of the one the job came in on.
    #[arg(long, value_parser = ["high", "normal", "low"])]
    pub priority: Option<String>,
    /// Say what would be replayed and what skipped, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What the overrides change in each job.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub model: Option<String>,
    pub provider: Option<String>,
    pub priority: Option<Priority>,
}

impl Overrides {
    /// Check the overrides against the configuration: a model and a provider that exist,
    /// and agree with each other.
    pub fn checked(args: &ReplayArgs, cfg: &Config, router: &Router) -> anyhow::Result<Overrides> {
        if let Some(p) = &args.provider {
            if !cfg.providers.iter().any(|c| &c.name == p) {
                let all: Vec<&str> = cfg.providers.iter().map(|c| c.name.as_str()).collect();
                anyhow::bail!(
                    "--provider {p:?} is not a configured provider ({})",
                    all.join(", ")
                );
            }
        }
        if let Some(m) = &args.model {
            let pinned = m.split_once('/');
            let known = match pinned {
                Some((p, name)) => router.model(name).is_some_and(|c| c.provider == p),
                None => m == "auto" || Tier::parse(m).is_some() || router.model(m).is_some(),
            };
            if !known {
                anyhow::bail!(
                    "--model {m:?} is not auto, a tier (cheap, fast, balanced, premium), a configured model or <provider>/<model>"
                );
            }
            if let (Some((p, _)), Some(want)) = (pinned, &args.provider) {
                if p != want {
                    anyhow::bail!(
                        "--model {m:?} is pinned to provider {p:?}, not --provider {want:?}"
                    );
                }
            }
        }
        Ok(Overrides {
            model: args.model.clone(),
            provider: args.provider.clone(),
            priority: args.priority.as_deref().and_then(Priority::parse),
        })
    }

    fn changes_route(&self) -> bool {
        self.model.is_some() || self.provider.is_some()
    }

    /// The job with the model and provider overrides applied.
    pub fn apply(&self, job: &mut serde_json::Value) {
        let Some(o) = job.as_object_mut() else {
            return;
        };
        if let Some(m) = &self.model {
            o.insert("model".into(), serde_json::Value::String(m.clone()));
        }
        if let Some(p) = &self.provider {
            o.insert("providers".into(), serde_json::json!({ "allow": [p] }));
        }
    }
}

/// Why a dead letter was not replayed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Skip {
    /// The payload was not a JSON object: it cannot be published as a job.
    NotAJob,
    /// Its subject's tenant was not valid (`_unknown`).
    BadTenant,
    /// With the overrides, the router finds no model for it.
    NoRoute,
    /// Its job succeeded since: nothing to run.
    Succeeded,
    /// Its job was published again already and runs now.
    Running,
    /// Another replay published this same dead letter within the duplicate window.
    Duplicate,
    /// Gone between the selection and the replay (replayed or purged meanwhile), or a
    /// named id that has no dead letter.
    NoDeadLetter,
}

impl Skip {
    fn why(&self) -> &'static str {
        match self {
            Skip::NotAJob => "the payload was not a JSON object (fix it and submit it again)",
            Skip::BadTenant => "its subject's tenant was not valid",
            Skip::NoRoute => "no route with the overrides",
            Skip::Succeeded => "already succeeded",
            Skip::Running => "running now (published again already)",
            Skip::Duplicate => "already replayed (duplicate publish dropped)",
            Skip::NoDeadLetter => "no dead letter (replayed or purged meanwhile)",
        }
    }

    /// A skip the operator has to act on (exit code 4).
    fn needs_action(&self) -> bool {
        matches!(self, Skip::NotAJob | Skip::BadTenant | Skip::NoRoute)
    }
}

enum Outcome {
    Replayed,
    Skipped(Skip),
    /// Publishing failed: the dead letter stays.
    Failed,
    /// Published, but the dead letter could not be deleted.
    NotRemoved,
}

struct Replayer<'a> {
    dlq: &'a Dlq,
    js: &'a jetstream::Context,
    router: &'a Router,
    overrides: &'a Overrides,
    prefix: &'a str,
    dry_run: bool,
    bar: &'a indicatif::ProgressBar,
    /// Print each key's line as it happens (the CLI); the lines are kept either way.
    echo: bool,
    lines: std::sync::Mutex<Vec<String>>,
}

/// What a replay did: counts, each key's line ("replayed acme/a to …", "skip …: why"),
/// and the summary line the CLI prints.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: u64,
    pub failed: u64,
    pub not_removed: u64,
    pub lines: Vec<String>,
    pub summary: String,
    /// The exit code the CLI gives it (0 done, 1 failures, 3 a named id had no dead
    /// letter, 4 a skip the operator has to act on).
    pub code: u8,
}

pub async fn run(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    args: ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let report = execute(cfg, js, names, &args, true).await?;
    eprintln!("{}", report.summary);
    Ok(ExitCode::from(report.code))
}

/// Replay what `args` selects (the CLI's `dlq replay` and the console's replay form).
/// `echo`: print each key's line (and a progress bar unless `args.quiet`).
pub async fn execute(
    cfg: &Config,
    js: &jetstream::Context,
    names: Names,
    args: &ReplayArgs,
    echo: bool,
) -> anyhow::Result<ReplayReport> {
    check_ids_or_all(&args.ids, args.all, &args.filters)?;
    let router = Router::new(cfg);
    let overrides = Overrides::checked(args, cfg, &router)?;
    let filter = args.filters.resolve(cfg, args.from_provider.as_deref())?;
    let (dlq, selection) = open_and_select(cfg, js, names, &filter, &args.ids, true).await?;
    let bar = crate::cli::submit::progress(
        args.quiet || !echo,
        selection.selected.len() as u64,
        if args.dry_run { "checked" } else { "replayed" },
    );
    let r = Replayer {
        dlq: &dlq,
        js,
        router: &router,
        overrides: &overrides,
        prefix: &cfg.nats.prefix,
        dry_run: args.dry_run,
        bar: &bar,
        echo,
        lines: std::sync::Mutex::new(Vec::new()),
    };
    let (mut replayed, mut failed, mut not_removed) = (0u64, 0u64, 0u64);
    let mut skipped: BTreeMap<Skip, u64> = BTreeMap::new();
    for id in &selection.missing {
        r.say(
            false,
            format!(
                "skip {}/{id}: no dead letter",
                filter.tenant.as_deref().unwrap_or("")
            ),
        );
        *skipped.entry(Skip::NoDeadLetter).or_default() += 1;
    }
    let mut outcomes = futures::stream::iter(selection.selected)
        .map(|s| r.one(s))
        .buffer_unordered(FETCH_WINDOW);
    while let Some(o) = outcomes.next().await {
        bar.inc(1);
        match o {
            Outcome::Replayed => replayed += 1,
            Outcome::Skipped(why) => *skipped.entry(why).or_default() += 1,
            Outcome::Failed => failed += 1,
            Outcome::NotRemoved => {
                replayed += 1;
                not_removed += 1;
            }
        }
    }
    drop(outcomes);
    bar.finish_and_clear();
    let total_skipped: u64 = skipped.values().sum();
    let mut summary = format!(
        "{replayed} {}, {total_skipped} skipped",
        if args.dry_run {
            "would be replayed"
        } else {
            "replayed"
        }
    );
    if !skipped.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|(k, n)| format!("{n} {}", k.why()))
            .collect();
        summary.push_str(&format!(" ({})", why.join("; ")));
    }
    summary.push_str(&format!(", {failed} failed to publish"));
    if not_removed > 0 {
        summary.push_str(&format!(
            ", {not_removed} replayed whose dead letters could not be removed (do not replay them again before they ran)"
        ));
    }
    let code = if failed > 0 || not_removed > 0 {
        1
    } else if skipped.keys().any(Skip::needs_action) {
        4
    } else if !args.ids.is_empty() && skipped.contains_key(&Skip::NoDeadLetter) {
        3
    } else {
        0
    };
    let lines = r.lines.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(ReplayReport {
        replayed,
        failed,
        not_removed,
        lines,
        summary,
        code,
    })
}

impl Replayer<'_> {
    /// Keep a key's line, and print it (stdout for what was done, stderr for the rest)
    /// when echoing.
    fn say(&self, done: bool, line: String) {
        if self.echo {
            self.bar.suspend(|| {
                if done {
                    println!("{line}");
                } else {
                    eprintln!("{line}");
                }
            });
        }
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    async fn one(&self, s: Selected) -> Outcome {
        let key = format!("{}/{}", s.tenant, s.id);
        let skip = |why: Skip| {
            self.say(false, format!("skip {key}: {}", why.why()));
            Outcome::Skipped(why)
        };
        match s.status.as_deref() {
            Some("succeeded") => return skip(Skip::Succeeded),
            Some("running") => return skip(Skip::Running),
            _ => {}
        }
        let letter = match s.letter {
            Some(l) => l,
            None => match self.dlq.get(&s.tenant, &s.id).await {
                Ok(Some(l)) => l,
                Ok(None) => return skip(Skip::NoDeadLetter),
                Err(e) => {
                    self.say(false, format!("failed {key}: {e:#}"));
                    return Outcome::Failed;
                }
            },
        };
        let DeadLetter {
            subject,
            sequence,
            entry,
        } = letter;
        let Some(mut job) = entry.job else {
            return skip(Skip::NotAJob);
        };
        if !is_valid_tenant(&s.tenant) {
            return skip(Skip::BadTenant);
        }
        self.overrides.apply(&mut job);
        let priority = self.overrides.priority.unwrap_or_else(|| {
            SubjectInfo::parse(&entry.subject, self.prefix)
                .priority
                .unwrap_or(Priority::Normal)
        });
        if self.overrides.changes_route() {
            if let Err(why) = self.routes(&job, priority) {
                self.say(false, format!("skip {key}: {}: {why}", Skip::NoRoute.why()));
                return Outcome::Skipped(Skip::NoRoute);
            }
        }
        let target = self.dlq.names.jobs_subject(priority, &s.tenant);
        if self.dry_run {
            self.say(true, format!("would replay {key} to {target}"));
            return Outcome::Replayed;
        }
        let body = match serde_json::to_vec(&job) {
            Ok(b) => b,
            Err(e) => {
                self.say(false, format!("failed {key}: {e}"));
                return Outcome::Failed;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        let msg_id = format!("{}:{}:replay:{sequence}", s.tenant, s.id);
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let published = async {
            self.js
                .publish_with_headers(target.clone(), headers, body.into())
                .await?
                .await
        }
        .await;
        let duplicate = match published {
            Ok(ack) => ack.duplicate,
            Err(e) => {
                self.say(false, format!("failed {key}: publishing to {target}: {e}"));
                return Outcome::Failed;
            }
        };
        if let Err(e) = remove_dead_letter(&self.dlq.stream, sequence).await {
            self.say(
                false,
                format!("replayed {key}, but its dead letter {subject} was not removed: {e}"),
            );
            return Outcome::NotRemoved;
        }
        if duplicate {
            return skip(Skip::Duplicate);
        }
        self.say(true, format!("replayed {key} to {target}"));
        Outcome::Replayed
    }

    /// Does the job (with the overrides) route? A job that cannot be read as a job is
    /// left to the worker to judge.
    fn routes(&self, job: &serde_json::Value, priority: Priority) -> Result<(), String> {
        let Ok(parsed) = serde_json::from_value::<Job>(job.clone()) else {
            return Ok(());
        };
        let tokens = crate::tokens::estimate_input_tokens(&parsed);
        self.router
            .plan(&parsed, tokens, RouteContext::new(priority))
            .map(|_| ())
            .map_err(|e| format!("{}: {}", e.kind.as_str(), e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_the_model_and_pin_the_provider() {
        let o = Overrides {
            model: Some("balanced".into()),
            provider: Some("anthropic".into()),
            priority: None,
        };
        let mut job = serde_json::json!({"id": "a", "tenant": "acme", "model": "fast",
            "providers": {"allow": ["openai"], "deny": ["gemini"]}, "messages": []});
        o.apply(&mut job);
        assert_eq!(job["model"], "balanced");
        assert_eq!(
            job["providers"],
            serde_json::json!({"allow": ["anthropic"]})
        );
        let mut untouched = serde_json::json!({"id": "b", "model": "fast"});
        Overrides::default().apply(&mut untouched);
        assert_eq!(untouched, serde_json::json!({"id": "b", "model": "fast"}));
    }
}
