//! NATS JetStream: streams and consumers ([`streams`]), the priority scheduler that pulls
//! only into free slots ([`scheduler`]) and shares them by weight ([`weighted`]), among
//! the tenants of a priority too with `[scheduling] fair` ([`tenants`]), and publishing
//! results and dead letters ([`publish`]); the backlog per tenant ([`backlog`]).

pub mod backlog;
pub mod publish;
pub mod scheduler;
pub mod streams;
pub mod tenants;
pub mod weighted;

pub use streams::Names;
