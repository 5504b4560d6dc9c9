//! The one integration-test binary (ripgrep's habit): one `mod` per area,
//! shared helpers in `support`.

mod support;

mod config;
mod notify;
mod ops;
mod sinks;
