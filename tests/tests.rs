//! The single integration-test binary: one module per area, sharing the
//! harness in `support`.

mod notify;
mod sinks;
mod support;
