//! rekey keeps cloud API keys fresh.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, validation with located errors, secret references.
//! - [`state`]: the SQLite store: rotations, sink acknowledgements, the event outbox.
//! - [`provider`]: the `Provider` trait and its backends (OceanBase, …).
//! - [`sink`]: the `Sink` trait and its backends (file, …).
//! - [`status`]: the snapshot the endpoint serves; [`metrics`]: Prometheus.
//! - [`secret`], [`clock`]: key material that cannot leak, and the injected clock.
//! - [`emulator`]: loopback emulators of the providers (tests, demos, benchmarks).
//!
//! A rotation flows: the daemon's scheduler fires a policy check → the
//! planner lists keys through the provider and decides per lineage → the
//! engine drives each due lineage through `planned → created → published →
//! retiring → completed`, committing every step to the store before the next
//! side effect → sinks receive the new key → the old key is deleted after the
//! grace period → events leave through the outbox.
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod failpoint;
pub mod logging;
pub mod metrics;
pub mod provider;
pub mod rotation;
pub mod secret;
pub mod sink;
pub mod state;
pub mod status;
