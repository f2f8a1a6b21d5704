//! Shared helpers for the end-to-end tests: a fresh database and NATS
//! namespace per test, the services started in-process or as real
//! processes, and polling with deadlines.

pub mod chain;
pub mod declared_routes;
pub mod env;
pub mod faults;
pub mod histories;
pub mod pages;
pub mod poll;
pub mod process;
pub mod read_models;
pub mod receiver;
pub mod seed;
pub mod stack;
pub mod writes;

pub use env::TestEnv;
pub use poll::eventually;
pub use stack::{spawn_stack, spawn_stack_with, Stack};
