//! Provider batches, the part that runs beside the job tasks (every worker runs it; a
//! lease on each batch row keeps two workers from doing the same step of one batch):
//!
//! 1. **Gather**: parked jobs of one provider and model become a batch when there are
//!    `batch.max_jobs` of them or the oldest has waited `batch.max_wait_s`
//!    ([`batches::gather`]: the batch row, state `submitting`, and its items commit
//!    together).
//! 2. **Submit** it to the provider, tagged with our batch id, and record the provider's
//!    id. A worker that dies between the two leaves a `submitting` batch whose lease runs
//!    out: the next worker asks the provider for a batch with that tag (OpenAI's metadata)
//!    and records it, or submits again when there is none.
//! 3. **Poll** every `batch.poll_interval_s`; past `batch.deadline_s`, cancel it (it then
//!    ends `cancelled` with what it did).
//! 4. **Settle** an ended batch: in one transaction each job's answer and its cost row at
//!    the batch price, or its move to live (with the failed call's row when one was
//!    made) ([`batches::settle`]).
//! 5. **Fan out**: each job's payload is published again to its jobs subject with the
//!    header [`REENTRY_HEADER`] (`answered` or `live`) and `Nats-Msg-Id`
//!    `<tenant>:<id>:batch:<batch id>`; the job task that takes it commits the answer
//!    as the job's result (`process::batched`) or runs it live, exactly like any job.

use crate::config::Config;
use crate::cost;
use crate::job::Job;
use crate::providers::batch::{BatchApi, BatchApis, BatchStatus, LineOutcome};
use crate::providers::ChatRequest;
use crate::queue::publish::Publisher;
use crate::store::batches::{self, BatchAnswer, HeldBatch, Item, ItemState, Settle, SettleOutcome};
use crate::store::StoreError;
use crate::telemetry::batch::BatchEnd;
use futures::StreamExt;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The header on a job message that comes back from a provider batch.
pub const REENTRY_HEADER: &str = "Switchyard-Batch";
/// Publishes of one fan-out in flight at once.
const FANOUT_WINDOW: usize = 64;
/// How often the items of ended jobs are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why a job message comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Its batch answered it: commit that answer.
    Answered,
    /// Its batch did not: run it live.
    Live,
}

impl Reentry {
    pub fn as_str(self) -> &'static str {
        match self {
            Reentry::Answered => "answered",
            Reentry::Live => "live",
        }
    }

    /// The reentry a message's headers announce.
    pub fn of(headers: Option<&async_nats::HeaderMap>) -> Option<Reentry> {
        match headers?.get(REENTRY_HEADER)?.as_str() {
            "answered" => Some(Reentry::Answered),
            "live" => Some(Reentry::Live),
            _ => None,
        }
    }
}

/// Where parked jobs are kept, and the providers' batch APIs.
pub struct Batching {
    pub pool: PgPool,
    pub apis: BatchApis,
}

/// The batch loop of one worker.
pub struct Batcher {
    pub cfg: Arc<Config>,
    pub batching: Arc<Batching>,
    pub publisher: Publisher,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl Batcher {
    fn providers(&self) -> Vec<String> {
        self.cfg
            .providers
            .iter()
            .filter(|p| self.batching.apis.has(&p.name))
            .map(|p| p.name.clone())
            .collect()
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.batch.lease_s)
    }

    fn poll_every(&self) -> Duration {
        Duration::from_secs(self.cfg.batch.poll_interval_s)
    }

    /// Run until `stop`: every second, gather what is due and look at batches that are
    /// due a look. Runs whether or not `[batch]` is enabled now: batches already sent
    /// are still answered.
    pub async fn run(self, stop: CancellationToken) {
        let providers = self.providers();
        if providers.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round(&providers, &stop).await {
                tracing::warn!(error = %e, "provider batches: postgres failed; trying again");
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = tokio::time::Instant::now();
                if let Err(e) = batches::sweep(&self.batching.pool).await {
                    tracing::warn!(error = %e, "sweeping ended batch items failed");
                }
            }
        }
    }

    /// One round: gather and submit while batches are due, then look at due batches.
    pub async fn round(
        &self,
        providers: &[String],
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let pool = &self.batching.pool;
        let b = &self.cfg.batch;
        while !stop.is_cancelled() {
            let gathered = batches::gather(
                pool,
                providers,
                b.max_jobs,
                Duration::from_secs(b.max_wait_s),
                self.lease(),
                Duration::from_secs(b.deadline_s),
            )
            .await?;
            let Some((held, items)) = gathered else { break };
            self.submit(&held, &items).await?;
        }
        while !stop.is_cancelled() {
            let Some(held) = batches::take_due(pool, providers, self.lease()).await? else {
                break;
            };
            self.look(held).await?;
        }
        Ok(())
    }

    fn api(&self, provider: &str) -> Option<&Arc<dyn BatchApi>> {
        self.batching.apis.get(provider)
    }

    fn upstream(&self, model: &str) -> Option<&crate::config::ModelConfig> {
        self.cfg.models.iter().find(|m| m.name == model)
    }

    /// Send a held batch and record the provider's id; a refusal sends its jobs live, a
    /// transient failure leaves it `submitting` to be tried again after a poll interval.
    async fn submit(&self, held: &HeldBatch, items: &[Item]) -> Result<(), StoreError> {
        let pool = &self.batching.pool;
        let (Some(api), Some(model)) = (self.api(&held.provider), self.upstream(&held.model))
        else {
            self.abandon(
                held,
                items.len(),
                "the provider or model is no longer configured",
            )
            .await?;
            return self.fan_out(held).await;
        };
        let jobs: Vec<Option<Job>> = items
            .iter()
            .map(|i| serde_json::from_slice(&i.payload).ok())
            .collect();
        if jobs.iter().any(Option::is_none) {
            self.abandon(held, items.len(), "a parked job no longer parses")
                .await?;
            return self.fan_out(held).await;
        }
        let reqs: Vec<ChatRequest<'_>> = jobs
            .iter()
            .flatten()
            .zip(items)
            .map(|(j, i)| request(j, &model.upstream, i.max_tokens))
            .collect();
        match api.submit(&held.id, &reqs).await {
            Ok(pid) => {
                self.metrics.batch.submitted(&held.provider);
                tracing::info!(batch = %held.id, provider_batch = %pid, jobs = items.len(),
                    provider = %held.provider, model = %held.model, "provider batch submitted");
                batches::release(pool, held, "submitted", Some(&pid), None, self.poll_every())
                    .await?;
                Ok(())
            }
            Err(e) if e.class.is_transient() => {
                tracing::warn!(batch = %held.id, error = %e, "submitting a provider batch failed; trying again later");
                batches::release(pool, held, "submitting", None, None, self.poll_every()).await?;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(batch = %held.id, error = %e, "the provider refused the batch; its jobs run live");
                let why = format!("the provider refused the batch: {e}");
                self.abandon(held, items.len(), &why).await?;
                self.fan_out(held).await
            }
        }
    }

    /// Send every job of a batch that was not sent live (and count it as abandoned).
    async fn abandon(&self, held: &HeldBatch, jobs: usize, why: &str) -> Result<(), StoreError> {
        if batches::abandon(&self.batching.pool, held, why).await? {
            let m = &self.metrics.batch;
            m.ended(&held.provider, BatchEnd::Abandoned, 0.0, 0, jobs as u64);
        }
        Ok(())
    }

    /// One look at a due batch, by its state.
    async fn look(&self, held: HeldBatch) -> Result<(), StoreError> {
        let pool = &self.batching.pool;
        let Some(api) = self.api(&held.provider).cloned() else {
            batches::release(pool, &held, &held.state, None, None, self.poll_every()).await?;
            return Ok(());
        };
        match held.state.as_str() {
            "submitting" => {
                // Its worker died or its submit failed: find it at the provider by our tag,
                // else send it again.
                match api.find(&held.id).await {
                    Ok(Some(pid)) => {
                        tracing::info!(batch = %held.id, provider_batch = %pid, "found a batch whose id was not recorded");
                        batches::release(
                            pool,
                            &held,
                            "submitted",
                            Some(&pid),
                            None,
                            self.poll_every(),
                        )
                        .await?;
                        Ok(())
                    }
                    Ok(None) => {
                        let items = batches::items_of(pool, &held.id).await?;
                        self.submit(&held, &items).await
                    }
                    Err(e) => {
                        tracing::warn!(batch = %held.id, error = %e, "cannot list the provider's batches; trying again later");
                        batches::release(pool, &held, "submitting", None, None, self.poll_every())
                            .await?;
                        Ok(())
                    }
                }
            }
            "submitted" | "cancelling" => {
                let Some(pid) = held.provider_batch_id.clone() else {
                    batches::release(pool, &held, "submitting", None, None, Duration::ZERO).await?;
                    return Ok(());
                };
                match api.poll(&pid).await {
                    Ok(BatchStatus::Running(status)) => {
                        let mut state = held.state.clone();
                        if held.deadline_passed && state == "submitted" {
                            match api.cancel(&pid).await {
                                Ok(()) => {
                                    tracing::info!(batch = %held.id, "deadline passed; batch cancelled, what it leaves runs live");
                                    state = "cancelling".into();
                                }
                                Err(e) => {
                                    tracing::warn!(batch = %held.id, error = %e, "cancelling a late batch failed")
                                }
                            }
                        }
                        batches::release(
                            pool,
                            &held,
                            &state,
                            None,
                            Some(&status),
                            self.poll_every(),
                        )
                        .await?;
                        Ok(())
                    }
                    Ok(BatchStatus::Ended { status, lines }) => {
                        self.settle(&held, api.as_ref(), &status, lines).await
                    }
                    Err(e) => {
                        tracing::warn!(batch = %held.id, error = %e, "polling a provider batch failed");
                        batches::release(pool, &held, &held.state, None, None, self.poll_every())
                            .await?;
                        Ok(())
                    }
                }
            }
            _ => self.fan_out(&held).await,
        }
    }

    /// Read each line's answer with the provider's chat adapter and commit how each job
    /// ends; then fan out.
    async fn settle(
        &self,
        held: &HeldBatch,
        api: &dyn BatchApi,
        status: &str,
        lines: Vec<crate::providers::batch::LineResult>,
    ) -> Result<(), StoreError> {
        let pool = &self.batching.pool;
        let items = batches::items_of(pool, &held.id).await?;
        let model = self.upstream(&held.model).cloned();
        let mut by_line: HashMap<u32, LineOutcome> =
            lines.into_iter().map(|l| (l.line, l.outcome)).collect();
        let latency_ms = u64::try_from(
            (chrono::Utc::now() - held.created_at)
                .num_milliseconds()
                .max(0),
        )
        .unwrap_or(0);
        let mut settles = Vec::with_capacity(items.len());
        for item in items
            .into_iter()
            .filter(|i| i.state == ItemState::Submitted)
        {
            let outcome = match (item.line.and_then(|l| by_line.remove(&l)), &model) {
                (Some(LineOutcome::Answer { status: code, body }), Some(m)) => {
                    read_line(api, m, &item, code, &body)
                }
                (Some(LineOutcome::NotRun { message }), _) => SettleOutcome::Live {
                    message: format!("batch {status}: {message}"),
                    call: None,
                },
                _ => SettleOutcome::Live {
                    message: format!("not answered by the batch (it ended {status})"),
                    call: None,
                },
            };
            settles.push(Settle {
                tenant: item.tenant,
                id: item.id,
                outcome,
            });
        }
        let answered = settles
            .iter()
            .filter(|s| matches!(s.outcome, SettleOutcome::Answered { .. }))
            .count();
        if !batches::settle(pool, held, status, latency_ms, &settles).await? {
            tracing::warn!(batch = %held.id, "lost the batch's lease before settling it");
            return Ok(());
        }
        let end = if held.state == "cancelling" {
            BatchEnd::Cancelled
        } else {
            BatchEnd::of_provider_status(status)
        };
        let live = settles.len() - answered;
        self.metrics.batch.ended(
            &held.provider,
            end,
            latency_ms as f64 / 1000.0,
            answered as u64,
            live as u64,
        );
        tracing::info!(batch = %held.id, status, answered, live, "provider batch ended");
        self.fan_out(held).await
    }

    /// Publish every settled job of the batch that is not published yet, then end it; a
    /// publish that fails leaves the batch to be fanned out again soon.
    async fn fan_out(&self, held: &HeldBatch) -> Result<(), StoreError> {
        let pool = &self.batching.pool;
        let items = batches::unpublished(pool, &held.id).await?;
        let js = &self.publisher.js;
        let results: Vec<Option<(String, String)>> = futures::stream::iter(items)
            .map(|item| async move {
                let reentry = if item.state == ItemState::Answered {
                    Reentry::Answered
                } else {
                    Reentry::Live
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(REENTRY_HEADER, reentry.as_str());
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}:{}:batch:{}", item.tenant, item.id, held.id).as_str(),
                );
                let sent = js
                    .publish_with_headers(
                        item.subject.clone(),
                        headers,
                        item.payload.clone().into(),
                    )
                    .await;
                let acked = match sent {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match acked {
                    Ok(()) => Some((item.tenant, item.id)),
                    Err(e) => {
                        tracing::warn!(tenant = %item.tenant, id = %item.id, error = %e,
                            "publishing a batched job back failed; trying again");
                        None
                    }
                }
            })
            .buffer_unordered(FANOUT_WINDOW)
            .collect()
            .await;
        let failed = results.iter().any(Option::is_none);
        let done: Vec<(String, String)> = results.into_iter().flatten().collect();
        if !done.is_empty() {
            batches::mark_published(pool, &done).await?;
        }
        if failed {
            batches::release(pool, held, "fanout", None, None, Duration::from_secs(1)).await?;
        } else {
            batches::finish(pool, held).await?;
        }
        Ok(())
    }
}

/// The chat request of a parked job, as its live call would send it.
fn request<'a>(job: &'a Job, upstream: &'a str, max_tokens: u32) -> ChatRequest<'a> {
    ChatRequest {
        model: upstream,
        messages: &job.messages,
        max_tokens,
        temperature: job.temperature,
        stop: job.stop.as_deref(),
        response_format: job.response_format.as_ref(),
        tools: job.tools.as_deref(),
        tool_choice: job.tool_choice.as_ref(),
    }
}

/// One line's HTTP answer, read as the live call's answer would be: an answer at the
/// batch price, or a failed call (its billed usage at the batch price) whose job runs
/// live.
fn read_line(
    api: &dyn BatchApi,
    model: &crate::config::ModelConfig,
    item: &Item,
    status: u16,
    body: &[u8],
) -> SettleOutcome {
    let Ok(job) = serde_json::from_slice::<Job>(&item.payload) else {
        return SettleOutcome::Live {
            message: "the parked job no longer parses".into(),
            call: None,
        };
    };
    let req = request(&job, &model.upstream, item.max_tokens);
    let price = |u: &crate::job::Usage| {
        cost::batch_cost_of(model, u).unwrap_or_else(|| cost::cost_of(model, u))
    };
    match api.read_answer(&req, status, body) {
        Ok(resp) => SettleOutcome::Answered {
            cost_usd: price(&resp.usage),
            answer: BatchAnswer {
                output: resp.output,
                usage: resp.usage,
            },
        },
        Err(e) => {
            let usage = e.usage.unwrap_or_default();
            SettleOutcome::Live {
                message: e.message.clone(),
                call: Some((e.class.as_str().to_string(), e.status, usage, price(&usage))),
            }
        }
    }
}
