//! Calling the candidates in order until one answers: health (breakers), rate limit,
//! call, and one [`CallRecord`] per call made, failed ones included, at what the
//! provider billed.
//!
//! Hedging (the plan's `hedge`): when a call has not answered by its model's observed
//! latency quantile (`routing.hedge.after`, within `min_ms..=max_ms`; no estimate yet, no
//! hedge), the next candidate is called too, if its breaker lets it and the rate limits
//! admit it at once (a hedge never waits at our own limiter). The first answer that
//! succeeds wins; the other call is dropped (cancelled): its cost row is `cancelled`
//! with its latency and cost 0 (the provider may bill it, but nobody saw the usage, as
//! for `worker_lost`), and its rate-limit admission keeps counting. A call that fails
//! while another is under way does not start a failover: the other one is waited for.

use super::stream::Chunks;
use super::Ctx;
use crate::config::ModelConfig;
use crate::cost::cost_of;
use crate::health::{Admit, CallOutcome};
use crate::job::Priority;
use crate::job::{Attempt, Job, Output, Usage};
use crate::providers::{ChatRequest, ChatResponse, FailureClass, ProviderError};
use crate::ratelimit::{Ask, Permit, Turn};
use crate::router::{Candidate, Plan};
use crate::store::{CallRecord, CommitRequest, JobKey, Lease};
use crate::telemetry::metrics::CallEvent;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use std::fmt::Write as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

pub struct ChainOutcome {
    /// The calls made now, numbered on from the earlier deliveries', in attempt order.
    pub calls: Vec<CallRecord>,
    pub success: Option<(ChatResponse, Arc<ModelConfig>)>,
    /// Some candidate failed in a way that may pass later (429, 5xx, timeout, local limit).
    pub transient: bool,
    /// The longest delay a provider asked for.
    pub retry_after: Option<Duration>,
    /// Every call failed because the input was too long.
    pub all_context_too_long: bool,
    /// The worker's grace period ended during a call (it was cut short), or the job's
    /// lease was taken over: hand the job back.
    pub cancelled: bool,
    /// When a hedge was started: which, when, and who answered first (for
    /// `route.reason`).
    pub hedge_note: Option<String>,
}

/// What a delivery's call chain works with.
pub struct Chain<'a> {
    ctx: &'a Ctx,
    job: &'a Job,
    input_estimate: u64,
    priority: Priority,
    /// The candidates not called yet, in the order to try them.
    left: Vec<&'a Candidate>,
    /// The number the next call gets.
    attempt: u32,
    /// A streamed job's chunks: calls stream into it, failures reset it.
    chunks: Option<&'a Chunks>,
    out: ChainOutcome,
}

/// A call the health and rate limits let go, not made yet. The first call of a new job is
/// admitted before the job is claimed, so that the claim writes its `started` row.
pub struct Admitted<'a> {
    cand: &'a Candidate,
    admit: Admit,
    permit: Permit,
}

impl Admitted<'_> {
    pub fn model(&self) -> &Arc<ModelConfig> {
        &self.cand.model
    }
}

/// A call under way.
struct Flight<'a> {
    cand: &'a Candidate,
    admit: Admit,
    permit: Permit,
    attempt: u32,
    started: Instant,
    /// Started as a hedge: what the result's attempt says of it.
    hedge: Option<String>,
    call: BoxFuture<'a, Result<ChatResponse, ProviderError>>,
}

/// What the chain waits for next (one at a time, on the stack: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Event {
    Answered(usize, Result<ChatResponse, ProviderError>),
    HedgeDue,
    Stop,
}

impl<'a> Chain<'a> {
    /// The chain of `plan`'s candidates for one delivery of `job`.
    pub fn new(
        ctx: &'a Ctx,
        job: &'a Job,
        plan: &'a Plan,
        input_estimate: u64,
        priority: Priority,
    ) -> Chain<'a> {
        // ── Rate limits and health (issue 11): each round drops the candidates whose
        // breaker is open or cooling (no call, no cost row: not a failure of the job), then
        // calls the first one left that the limits let go now, or waits (in priority, then
        // deadline order) for the earliest one. A local limit is never a failure; each
        // candidate is called at most once per delivery. The order is latency-aware when
        // the job asks for a tier or auto.
        let left: Vec<&Candidate> = ctx
            .health
            .order(&job.model, &plan.candidates)
            .into_iter()
            .filter(|c| ctx.providers.get(&c.model.provider).is_some())
            .collect();
        Chain {
            ctx,
            job,
            input_estimate,
            priority,
            left,
            attempt: 1,
            chunks: None,
            out: ChainOutcome {
                calls: Vec::new(),
                success: None,
                transient: false,
                retry_after: None,
                all_context_too_long: true,
                cancelled: false,
                hedge_note: None,
            },
        }
    }

    /// Stream the calls' text into `chunks` (a streamed job's).
    pub fn stream_into(&mut self, chunks: Option<&'a Chunks>) {
        self.chunks = chunks;
    }

    /// An admitted call that will not be made (the job turned out to be another
    /// delivery's, or over its budget): its probe slot and rate-limit admission go back.
    pub fn abandon(&self, a: Admitted<'a>) {
        give_back(self.ctx, &a.cand.model, a.admit);
        a.permit.cancel();
    }
}

/// Call `chain`'s candidates in turn, numbering the calls from `first_attempt`. `first`:
/// the first call, admitted already, and whether its `started` row is written.
pub async fn run_chain(
    mut chain: Box<Chain<'_>>,
    plan: &Plan,
    first_attempt: u32,
    lease: &Lease,
    mut first: Option<(Admitted<'_>, bool)>,
) -> ChainOutcome {
    let ctx = chain.ctx;
    chain.attempt = first_attempt;
    let mut flying: Vec<Flight<'_>> = Vec::new();
    // A streamed job is not hedged: two calls would stream over each other.
    let mut hedges_left = match chain.chunks {
        Some(_) => 0,
        None => plan.hedge.map_or(0, |h| h.max_extra),
    };
    // When the next hedge is due, and the delay it was computed with.
    let mut hedge_at: Option<(Instant, Duration)> = None;
    loop {
        if flying.is_empty() {
            // The next call: the one admitted before the claim, else the next the limits
            // let go.
            let next = loop {
                let (a, written) = match first.take() {
                    Some(first) => first,
                    None => match chain.admit().await {
                        Some(a) => (a, false),
                        None => break None,
                    },
                };
                match chain.launch(a, lease, written).await {
                    Launched::Flying(f) => break Some(f),
                    Launched::NoAdapter => continue,
                    Launched::Stop => break None,
                }
            };
            let Some(f) = next else {
                break;
            };
            hedge_at = plan.hedge.and_then(|h| {
                let m = &f.cand.model;
                let observed = ctx
                    .health
                    .quantile(&m.provider, &m.name, h.after.fraction());
                h.delay(observed).map(|d| (f.started + d, d))
            });
            flying.push(f);
        }
        let due = hedge_at
            .filter(|_| hedges_left > 0 && !chain.left.is_empty())
            .map(|(at, _)| at);
        let event = tokio::select! {
            (i, r) = first_answer(&mut flying) => Event::Answered(i, r),
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Event::HedgeDue,
            _ = ctx.abort.cancelled() => Event::Stop,
        };
        match event {
            Event::Answered(i, result) => {
                let f = flying.swap_remove(i);
                if let Some(won) = chain.land(f, result).await {
                    let why = format!("hedge race: {} answered first", won.1.name);
                    if let Some(note) = &mut chain.out.hedge_note {
                        let _ = write!(note, "; {} answered first", won.1.name);
                    }
                    for f in flying.drain(..) {
                        // A call that was hedged ran past the hedge delay: its time so far
                        // belongs in its model's latency quantile (a hedge call's does not:
                        // it may have just started).
                        if f.hedge.is_none() {
                            let m = &f.cand.model;
                            ctx.health
                                .record_cut(&m.provider, &m.name, f.started.elapsed());
                        }
                        chain.cancel(f, why.clone());
                    }
                    chain.out.all_context_too_long = false;
                    chain.out.success = Some(won);
                    break;
                }
            }
            Event::HedgeDue => {
                hedges_left -= 1;
                let Some((_, delay)) = hedge_at else { continue };
                hedge_at = Some((Instant::now() + delay, delay));
                // The call it hedges: the oldest one under way.
                let Some((primary, n)) = flying
                    .iter()
                    .min_by_key(|f| f.attempt)
                    .map(|f| (f.cand.model.name.clone(), f.attempt))
                else {
                    continue;
                };
                if let Some(mut f) = chain.hedge_call(lease).await {
                    let after = plan.hedge.map(|h| h.after.to_string()).unwrap_or_default();
                    let ms = delay.as_millis();
                    let note = chain.out.hedge_note.get_or_insert_with(String::new);
                    let _ = write!(
                        note,
                        "; hedged: {} after {ms} ms ({after} of {primary})",
                        f.cand.model.name
                    );
                    f.hedge = Some(format!(
                        "hedge: called {ms} ms after attempt {n} ({primary}) had not answered"
                    ));
                    flying.push(f);
                }
            }
            Event::Stop => {
                for f in flying.drain(..) {
                    chain.cancel(
                        f,
                        "cut short: the worker's shutdown grace period ended".into(),
                    );
                }
                chain.out.cancelled = true;
                chain.out.transient = true;
                break;
            }
        }
    }
    let mut out = chain.out;
    out.calls.sort_by_key(|c| c.attempt.attempt);
    out
}

/// The first of `flying` to answer: its index and answer. Never ready when empty.
async fn first_answer(flying: &mut [Flight<'_>]) -> (usize, Result<ChatResponse, ProviderError>) {
    std::future::poll_fn(move |cx| {
        for (i, f) in flying.iter_mut().enumerate() {
            if let Poll::Ready(r) = f.call.as_mut().poll(cx) {
                return Poll::Ready((i, r));
            }
        }
        Poll::Pending
    })
    .await
}

impl<'a> Chain<'a> {
    /// The next call of the chain, admitted: the first candidate left that is healthy and
    /// that the limits let go, waiting for the earliest when none can go now. `None`:
    /// nothing left, or the worker is stopping (`out.cancelled`).
    pub async fn admit(&mut self) -> Option<Admitted<'a>> {
        let ctx = self.ctx;
        let mut admits = self.healthy();
        let asks = self.asks();
        let asked = Instant::now();
        let admitted = tokio::select! {
            a = ctx.limiters.admit_first(&asks, self.turn()) => a,
            _ = ctx.abort.cancelled() => None,
        };
        let waited = asked.elapsed();
        let Some((i, permit)) = admitted else {
            // Nothing left, or the worker is stopping: free the probe slots taken above.
            for (c, a) in self.left.iter().zip(admits) {
                give_back(ctx, &c.model, a);
            }
            if ctx.abort.is_cancelled() {
                self.out.cancelled = true;
                self.out.transient = true;
            }
            return None;
        };
        let cand = self.left.remove(i);
        let admit = admits.remove(i);
        ctx.metrics
            .limiter_waited(&cand.model.provider, &cand.model.name, waited);
        // The others' probe slots go back: they are asked again next round.
        for (c, a) in self.left.iter().zip(admits) {
            give_back(ctx, &c.model, a);
        }
        Some(Admitted {
            cand,
            admit,
            permit,
        })
    }

    /// A hedge: the first candidate left that is healthy and that the limits admit at
    /// once; `None` when none can go now (a hedge never waits).
    async fn hedge_call(&mut self, lease: &Lease) -> Option<Flight<'a>> {
        let ctx = self.ctx;
        let mut admits = self.healthy();
        let asks = self.asks();
        let Some((i, permit)) = ctx.limiters.try_admit_first(&asks, self.turn()) else {
            for (c, a) in self.left.iter().zip(admits) {
                give_back(ctx, &c.model, a);
            }
            tracing::debug!("hedge due, but no candidate may be called at once; not hedging");
            return None;
        };
        let cand = self.left.remove(i);
        let admit = admits.remove(i);
        ctx.metrics
            .limiter_waited(&cand.model.provider, &cand.model.name, Duration::ZERO);
        for (c, a) in self.left.iter().zip(admits) {
            give_back(ctx, &c.model, a);
        }
        let a = Admitted {
            cand,
            admit,
            permit,
        };
        self.launch(a, lease, false).await.flying()
    }

    /// Drop the candidates whose breaker is open or cooling (not a failure of the job:
    /// no call, no cost row); the admits of the rest, in order.
    fn healthy(&mut self) -> Vec<Admit> {
        let ctx = self.ctx;
        let out = &mut self.out;
        let mut admits: Vec<Admit> = Vec::with_capacity(self.left.len());
        self.left.retain(|c| {
            let m = &c.model;
            match ctx.health.allow(&m.provider, &m.name) {
                Admit::Skip(why, d) => {
                    tracing::debug!(provider = %m.provider, model = %m.name, why = why.as_str(),
                        wait_ms = d.as_millis() as u64, "provider unhealthy; next candidate");
                    out.transient = true;
                    out.all_context_too_long = false;
                    out.retry_after = Some(out.retry_after.map_or(d, |r| r.min(d)));
                    false
                }
                a => {
                    admits.push(a);
                    true
                }
            }
        });
        admits
    }

    /// Its place when it waits at a rate limit: by priority, then earliest deadline.
    fn turn(&self) -> Turn {
        Turn::new(self.priority, self.job.deadline)
    }

    fn asks(&self) -> Vec<Ask<'a>> {
        self.left
            .iter()
            .map(|&c| Ask {
                provider: &c.model.provider,
                model: &c.model.upstream,
                tokens: self.input_estimate + u64::from(c.max_tokens),
            })
            .collect()
    }

    /// Write the call's `started` row (unless `written`: the claim wrote it), then start
    /// it.
    async fn launch(&mut self, a: Admitted<'a>, lease: &Lease, written: bool) -> Launched<'a> {
        let ctx = self.ctx;
        let Admitted {
            cand,
            admit,
            permit,
        } = a;
        let m = &cand.model;
        let Some(adapter) = ctx.providers.get(&m.provider) else {
            give_back(ctx, m, admit);
            return Launched::NoAdapter;
        };
        // Another delivery owns the job now (this one stalled past its lease): no call.
        if lease.is_lost() {
            give_back(ctx, m, admit);
            self.out.cancelled = true;
            self.out.transient = true;
            return Launched::Stop;
        }
        // Its cost row, `started`, before the call: if this worker dies during the call,
        // the row is there (the next delivery marks it `worker_lost`).
        if !written && !Box::pin(record_start(ctx, self.job, self.attempt, m)).await {
            give_back(ctx, m, admit);
            self.out.cancelled = true;
            self.out.transient = true;
            return Launched::Stop;
        }
        let job = self.job;
        let req = ChatRequest {
            model: &m.upstream,
            messages: &job.messages,
            max_tokens: cand.max_tokens,
            temperature: job.temperature,
            stop: job.stop.as_deref(),
            response_format: job.response_format.as_ref(),
            tools: job.tools.as_deref(),
            tool_choice: job.tool_choice.as_ref(),
        };
        let attempt = self.attempt;
        self.attempt += 1;
        Launched::Flying(Flight {
            cand,
            admit,
            permit,
            attempt,
            started: Instant::now(),
            hedge: None,
            call: start_call(adapter.as_ref(), req, self.chunks, attempt),
        })
    }

    /// A call answered: record it (limits, health, metrics, its [`CallRecord`]); its
    /// response and model when it succeeded.
    async fn land(
        &mut self,
        f: Flight<'a>,
        result: Result<ChatResponse, ProviderError>,
    ) -> Option<(ChatResponse, Arc<ModelConfig>)> {
        let ctx = self.ctx;
        let job = self.job;
        let m = &f.cand.model;
        let took = f.started.elapsed();
        let mut rec = attempt_of(f.attempt, m, took);
        let reading = match &result {
            Ok(r) => r.rate.as_ref(),
            Err(e) => e.rate.as_deref(),
        };
        ctx.limiters.observe(&m.provider, &m.upstream, reading);
        let judged = match &result {
            Ok(_) => CallOutcome::Succeeded,
            Err(e) => CallOutcome::Failed {
                class: e.class,
                retry_after: e.retry_after,
            },
        };
        ctx.health.record(&m.provider, &m.name, judged, took);
        // Rate limits: correct the reservation to the usage; a 429 cools every worker.
        let used = match &result {
            Ok(r) => Some(r.usage),
            Err(e) => e.usage,
        };
        f.permit
            .settle(used.map(|u| u.input_tokens + u.output_tokens));
        if let Err(e) = &result {
            if e.class == FailureClass::RateLimited {
                Box::pin(
                    ctx.limiters
                        .cool_down(&m.provider, &m.upstream, e.retry_after),
                )
                .await;
            }
        }
        if f.hedge.is_some() {
            ctx.metrics.hedged(&m.provider, &m.name, result.is_ok());
        }
        let out = &mut self.out;
        match result {
            Ok(mut resp) => {
                sanitize(&mut resp.output);
                let cost = cost_of(m, &resp.usage);
                rec.outcome = "succeeded".into();
                rec.status = Some(200);
                rec.cost_usd = cost;
                rec.message = f.hedge;
                ctx.metrics
                    .call(call_event(job, m, "succeeded", took, &resp.usage, cost));
                out.calls.push(CallRecord {
                    attempt: rec,
                    usage: resp.usage,
                });
                Some((resp, m.clone()))
            }
            Err(e) => {
                if let Some(chunks) = self.chunks {
                    chunks.failed(f.attempt, failed_reason(m, &e));
                }
                // A 200 that we could not use was still billed.
                let usage = e.usage.unwrap_or_default();
                let cost = e.usage.map_or(Decimal::ZERO, |u| cost_of(m, &u));
                tracing::info!(provider = %m.provider, model = %m.name, outcome = e.class.as_str(),
                    status = e.status, latency_ms = rec.latency_ms, "provider call failed");
                ctx.metrics
                    .call(call_event(job, m, e.class.as_str(), took, &usage, cost));
                rec.outcome = e.class.as_str().to_string();
                rec.status = e.status;
                rec.cost_usd = cost;
                rec.message = Some(e.message);
                out.calls.push(CallRecord {
                    attempt: rec,
                    usage,
                });
                if e.class.is_transient() {
                    out.transient = true;
                    if let Some(d) = e.retry_after {
                        out.retry_after = Some(out.retry_after.map_or(d, |r| r.max(d)));
                    }
                }
                if e.class != FailureClass::ContextTooLong {
                    out.all_context_too_long = false;
                }
                None
            }
        }
    }

    /// Cut a call short (dropping it ends the request): its record is `cancelled` with
    /// its latency and cost 0 (nobody saw what the provider billed). Its rate-limit
    /// admission keeps its whole reservation: the request was made.
    fn cancel(&mut self, f: Flight<'a>, why: String) {
        let ctx = self.ctx;
        let Flight {
            cand,
            admit,
            permit,
            attempt,
            started,
            hedge,
            call,
        } = f;
        drop(call);
        drop(permit);
        if let Some(chunks) = self.chunks {
            chunks.failed(attempt, format!("cut short: {why}"));
        }
        let m = &cand.model;
        let took = started.elapsed();
        give_back(ctx, m, admit);
        if hedge.is_some() {
            ctx.metrics.hedged(&m.provider, &m.name, false);
        }
        let none = Usage::default();
        ctx.metrics.call(call_event(
            self.job,
            m,
            "cancelled",
            took,
            &none,
            Decimal::ZERO,
        ));
        let mut rec = attempt_of(attempt, m, took);
        rec.outcome = "cancelled".into();
        rec.message = Some(why);
        tracing::debug!(provider = %m.provider, model = %m.name, attempt,
            latency_ms = rec.latency_ms, "provider call cancelled");
        self.out.calls.push(CallRecord {
            attempt: rec,
            usage: Usage::default(),
        });
    }
}

enum Launched<'a> {
    Flying(Flight<'a>),
    /// The candidate's provider has no adapter: try the next.
    NoAdapter,
    /// The worker is stopping, or another delivery owns the job: make no call.
    Stop,
}

impl<'a> Launched<'a> {
    fn flying(self) -> Option<Flight<'a>> {
        match self {
            Launched::Flying(f) => Some(f),
            Launched::NoAdapter | Launched::Stop => None,
        }
    }
}

/// The call itself: streamed into `chunks` for a streamed job. (Not inline in `launch`:
/// there the choice grew every job's future by ~480 bytes in debug builds.)
fn start_call<'a>(
    adapter: &'a dyn crate::providers::Provider,
    req: ChatRequest<'a>,
    chunks: Option<&Chunks>,
    attempt: u32,
) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
    match chunks {
        Some(chunks) => adapter.chat_stream(req, chunks.deltas(attempt)),
        None => adapter.chat(req),
    }
}

/// A streamed job's reset reason for a call that failed.
fn failed_reason(m: &ModelConfig, e: &ProviderError) -> String {
    format!(
        "{}/{} failed ({}: {})",
        m.provider,
        m.name,
        e.class.as_str(),
        e.message
    )
}

fn attempt_of(attempt: u32, m: &ModelConfig, took: Duration) -> Attempt {
    Attempt {
        attempt,
        provider: m.provider.clone(),
        model: m.name.clone(),
        outcome: String::new(),
        latency_ms: took.as_millis() as u64,
        cost_usd: Decimal::ZERO,
        status: None,
        message: None,
    }
}

/// health: a probe that made no call frees its slot.
fn give_back(ctx: &Ctx, m: &ModelConfig, admit: Admit) {
    if admit == Admit::Probe {
        ctx.health
            .record(&m.provider, &m.name, CallOutcome::Abandoned, Duration::ZERO);
    }
}

/// Write the `started` cost row of the call about to be made, waiting in place while
/// Postgres is away. False: the worker is stopping (make no call).
async fn record_start(ctx: &Ctx, job: &Job, attempt: u32, m: &ModelConfig) -> bool {
    let req = CommitRequest {
        key: JobKey {
            tenant: job.tenant.clone(),
            id: job.id.clone(),
            feature: job.feature.clone(),
            user_id: job.user.clone(),
        },
        calls: vec![CallRecord {
            attempt: Attempt {
                attempt,
                provider: m.provider.clone(),
                model: m.name.clone(),
                outcome: "started".into(),
                latency_ms: 0,
                cost_usd: Decimal::ZERO,
                status: None,
                message: None,
            },
            usage: Usage::default(),
        }],
        job: None,
        release: None,
    };
    match Box::pin(super::process::commit(ctx, req)).await {
        Ok(_) => true,
        Err(super::process::CommitFailed::Stopping) => false,
        // Postgres refuses this job's rows: the final commit meets the same refusal and
        // ends the job as `internal`; make the call regardless.
        Err(super::process::CommitFailed::Refused(e, _)) => {
            tracing::warn!(error = %e, "postgres refused the call's started row");
            true
        }
    }
}

fn call_event<'a>(
    job: &'a Job,
    m: &'a ModelConfig,
    outcome: &'static str,
    duration: Duration,
    usage: &'a Usage,
    cost_usd: Decimal,
) -> CallEvent<'a> {
    CallEvent {
        provider: &m.provider,
        model: &m.name,
        outcome,
        duration,
        usage,
        cost_usd,
        tenant: &job.tenant,
        feature: job.feature.as_deref(),
    }
}

/// Postgres cannot store U+0000: replace it in what a provider returned.
fn sanitize(o: &mut Output) {
    if let Some(c) = &mut o.content {
        if c.contains('\0') {
            *c = c.replace('\0', "\u{FFFD}");
        }
    }
    for call in &mut o.tool_calls {
        if call.function.arguments.contains('\0') {
            call.function.arguments = call.function.arguments.replace('\0', "\u{FFFD}");
        }
    }
}
