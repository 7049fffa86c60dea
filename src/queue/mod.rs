//! NATS JetStream: streams and consumers ([`streams`]), the priority scheduler that pulls
//! only into free slots ([`scheduler`]) and shares them by weight ([`weighted`]), among
//! the tenants of a priority too with `[scheduling] fair` ([`tenants`], earliest deadline
//! first within a pulled window: [`deadline_order`]), and publishing
//! results and dead letters ([`publish`]); the backlog per tenant ([`backlog`]).

pub mod backlog;
pub mod deadline_order;
pub mod publish;
pub mod scheduler;
pub mod streams;
pub mod tenants;
pub mod weighted;

pub use streams::Names;
