//! switchyard: an event-driven queue worker for batch and async LLM completion jobs.
//!
//! Producers publish jobs to NATS JetStream (`<prefix>.jobs.<priority>.<tenant>`); workers
//! pull them by priority, route each to a provider, call it, commit the result and one cost
//! row per provider call to Postgres, then publish the result and acknowledge the message.
//! See `DESIGN.md` (Part 1 is the contract) and `README.md`.

pub mod alloc;
pub mod app;
pub mod budget;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connect;
pub mod console;
pub mod cost;
pub mod frontdoor;
pub mod health;
pub mod job;
pub mod providers;
pub mod queue;
pub mod ratelimit;
pub mod router;
pub mod screen;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod worker;
