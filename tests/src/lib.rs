//! Shared helpers for the end-to-end tests: a fresh database and NATS
//! namespace per test, the services started in-process or as real
//! processes, and polling with deadlines.

pub mod env;
pub mod poll;
pub mod process;

pub use env::TestEnv;
pub use poll::eventually;
