//! rekey keeps cloud API keys fresh.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema, validation with located errors, secret references.
//! - [`state`]: the SQLite store: rotations, sink acknowledgements, the event outbox.
//! - [`provider`]: the `Provider` trait and its backends (OceanBase, Tencent, Huawei).
//! - [`sink`]: the `Sink` trait and its backends (file, webhook, Vault/OpenBao).
//! - [`notify`]: signed webhook delivery of the event outbox (Standard Webhooks).
//! - [`outbound`]: the outbound HTTP rules (TLS, `ca_file`, proxies and loopback, body caps,
//!   what is kept of a response) that providers, sinks and notifications share.
//! - [`status`]: the endpoint that serves the engine's snapshot, and its client; [`metrics`]: Prometheus.
//! - [`daemon`]: the long-running service; `daemon::sdnotify` talks to systemd.
//! - [`rotation`]: the planner, the engine's state machine, crash recovery, the
//!   health rule (`rotation::health`) and the snapshot it publishes (`rotation::report`).
//! - [`emulator`]: loopback emulators of the three provider APIs (`rekey emulate`, dev, tests, benches).
//! - [`dev`]: `rekey dev`, the embedded default.
//! - [`secret`], [`clock`]: key material that cannot leak, and the injected clock
//!   (the daemon's runs on the boot clock, so wall-clock steps cannot fool it).
//! - [`emulator`]: loopback emulators of the provider APIs (`rekey emulate`, dev, tests).
//!
//! A rotation flows: the daemon's scheduler fires a policy check → the
//! planner lists keys through the provider and decides per lineage → the
//! engine drives each due lineage through `planned → created → published →
//! retiring → completed`, committing every step to the store before the next
//! side effect → sinks receive the new key → the old key is deleted after the
//! grace period → events leave through the outbox.
pub mod arena;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dev;
pub mod emulator;
pub mod failpoint;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod provider;
pub mod rotation;
pub mod secret;
pub mod sink;
pub mod state;
pub mod status;
