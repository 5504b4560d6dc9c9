//! The status surface: the endpoint that serves the snapshot the engine
//! publishes (so a slow provider never slows `/status`) and the client that
//! reads it. The snapshot and command types are the engine's
//! ([`crate::rotation::report`], [`crate::rotation::health`]), re-exported
//! here; nothing in this module computes health.
//!
//! [`server`] serves it over HTTP; [`client`] is what `rekey status` and
//! `rekey rotate` use to ask a running daemon.

pub mod client;
pub mod server;

pub use crate::rotation::report::{
    Command, CommandReply, CommandRequest, CommandSender, Condition, Health, KeyState, KeyStatus,
    LastRotation, LineageStatus, PolicyStatus, RotateReply, RotateRequest, RotateSender,
    RotationSummary, Snapshot, StatusHandle,
};
pub use crate::rotation::report::{Instance, hostname};
