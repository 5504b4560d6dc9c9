//! The test harness shared by every area: fakes we own and real tools we
//! start, each in its own module with clearly named helpers.
//!
//! - [`receiver`]: an in-test HTTP receiver for signed webhooks that checks
//!   signatures on its own and fails on demand.
//! - [`openbao`]: a real OpenBao dev server (`bao` from PyPI), killed on drop.
//! - [`logs`]: capture `tracing` output at TRACE to search it for secrets.
//! - [`python`]: the official `standardwebhooks` library, via `$REKEY_TEST_PYTHON`.
#![allow(dead_code)]

pub mod logs;
pub mod openbao;
pub mod python;
pub mod receiver;
