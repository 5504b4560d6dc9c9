//! The one integration-test binary (ripgrep's habit): one `mod` per area,
//! shared helpers in `support`.

mod support;

mod config;
mod e2e;
mod emulators;
mod ha;
mod huawei;
mod lifecycle;
mod liveness;
mod migrate_state;
mod notify;
mod oceanbase;
mod ops;
mod ownership;
mod sdk;
mod sinks;
mod tencent;
mod untrusted;
mod walks;
