//! The single integration-test binary: one `mod` line per area, a shared
//! harness in `support`.

mod oceanbase;
mod support;
