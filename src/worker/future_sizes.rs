//! What one job in flight costs in its own task: the size of the futures a job task is
//! made of, printed and held to a ceiling (issue 12: 10,000 calls in flight in ≤ 200 MiB).
//! A job task is allocated at the size of its largest state; states that are rare or
//! short (claim, commit, publish, hand-back) are boxed so that the state a job waits in
//! for its provider's answer is what sets it.
//!
//! The sizes are those of this (debug) build; a release build's are about the same
//! (massif, release: 4,926 B per job task, was 7,332 B). `cargo test --lib future_sizes
//! -- --nocapture` prints them.

use super::*;
use crate::job::Job;
use crate::router::Plan;
use crate::store::Lease;
use std::mem::size_of;

/// The size of what `f` returns (an async fn's future), without calling it.
fn size3<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
    size_of::<R>()
}

fn size4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
    size_of::<R>()
}

#[allow(clippy::type_complexity)]
fn size7<A, B, C, D, E, F, G, R>(_: impl FnOnce(A, B, C, D, E, F, G) -> R) -> usize {
    size_of::<R>()
}

#[test]
fn job_futures_stay_small() {
    let job = size4::<Arc<Ctx>, Delivery, async_nats::Message, Acker, _>(handle);
    let process =
        size3::<&'static Ctx, Delivery, &'static async_nats::Message, _>(process::process);
    let chain =
        size7::<&'static Ctx, &'static Job, &'static Plan, u64, u32, Priority, &'static Lease, _>(
            calls::run_chain,
        );
    println!("job task future: {job} B; process: {process} B; run_chain: {chain} B");
    // Ceilings with some room over what this build measures; a change that grows the
    // state a job waits in fails here (box the new rare state instead).
    // (5,568 and 1,600 B once hedged calls, two flights at once, and the response cache
    // came in; 4,928 and ~1,400 B before them; 5,632 with the semantic cache.)
    assert!(job <= 5_700, "job task future: {job} bytes");
    assert!(chain <= 1_700, "run_chain future: {chain} bytes");
}
