//! Ambulance beyond one host: the fleet, over NATS JetStream.
//!
//! ```text
//! ambulance serve (agent inside) ──mTLS──▶ NATS JetStream ◀──mTLS── ambulance fleet serve (controller)
//! ```
//!
//! * [`agent`]: inside `ambulance serve` with a `[fleet]` section — enrols with the zero
//!   certificate, renews, publishes health, failures and reports, runs transactions;
//! * [`controller`]: `ambulance fleet serve` — the fleet CA, enrolment, the registry of
//!   hosts, transactions, and the fleet API;
//! * [`client`]: the CLI's way to the controller's API;
//! * [`pool`]: the pure planner that keeps each role at its desired count;
//! * [`names`], [`auth`], [`pki`], [`engine`], [`model`]: the subjects and buckets, who
//!   may use which, the certificates, the engine calls, and the JSON that travels.
//!
//! Every identity on the engine is a certificate of the fleet CA mapped to a NATS user by
//! its subject; [`auth`] says exactly what each may publish and subscribe to.
#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod client;
pub mod controller;
pub mod engine;
mod error;
pub mod model;
pub mod names;
pub mod pki;
pub mod pool;

pub use error::{FleetError, Result};
