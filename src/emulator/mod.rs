//! Loopback emulators of the provider APIs, for `rekey dev`, the
//! integration tests and the benchmarks (`rekey emulate …`).
//!
//! Each emulator is faithful to its seed API document (request and response
//! shapes, authentication, documented quirks) and adds knobs a real provider
//! does not have: pre-seeded keys, latency, an error rate, a rate limit, and
//! an unauthenticated admin API under `/__emulator/` (answered on loopback
//! only) to read every key including its secret, inject faults and read
//! request counts. State lives in memory; nothing is written to disk.
//!
//! - [`oceanbase`]: OceanBase Cloud MaaS API keys (HTTP Digest auth).
//! - [`tencent`]: Tencent Cloud API Gateway keys (TC3 signatures, HTTP-200
//!   error envelopes, usage plans).
//! - [`huawei`]: Huawei Cloud NES credentials (token, fake IAM, AK/SK).
//! - [`common`]: the one framework the three share (admin API, fault
//!   dials and forced faults, stats and request log, rate limiter, server
//!   lifecycle); each emulator file keeps only its vendor's protocol.
//! - [`sig`]: the emulators' own TC3 and SDK-HMAC-SHA256 verifiers (never
//!   the client's code), pinned by the PROTOCOLS vectors.
//! - [`zip`]: in-memory ZIP archives for the Huawei create answer.

pub mod common;
pub mod huawei;
pub mod oceanbase;
pub mod sig;
pub mod tencent;
pub mod zip;

pub use common::{TokenBucket, admin_allowed, parse_rate, retry_after_secs};
