//! Loopback emulators of the provider APIs, for `rekey dev`, the
//! integration tests and the benchmarks (`rekey emulate …`).
//!
//! Each emulator is faithful to its seed API document and PROTOCOLS.md
//! (request and response shapes, authentication, documented errors) and
//! strict about what it accepts, and adds knobs a real provider does not
//! have: pre-seeded keys, latency, an error rate, a rate limit, and an
//! unauthenticated admin API under `/__emulator/` (loopback clients only)
//! to read every key including its secret, inject faults and read request
//! counts. State lives in memory.
//!
//! - [`tencent`]: Tencent Cloud API Gateway keys (TC3 signatures, HTTP-200
//!   error envelopes, usage plans).
//! - [`huawei`]: Huawei Cloud NES credentials (token, fake IAM, AK/SK).
//! - [`common`]: what they share (rates, token bucket, server lifecycle).

pub mod common;
pub mod huawei;
pub mod tencent;
