//! NATS JetStream: streams and consumers ([`streams`]), the priority scheduler that pulls
//! only into free slots ([`scheduler`]) and shares them by weight ([`weighted`]), and
//! publishing results and dead letters ([`publish`]).

pub mod publish;
pub mod scheduler;
pub mod streams;
pub mod weighted;

pub use streams::Names;
