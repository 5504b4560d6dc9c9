//! The integration test binary: one `mod` per area, helpers in `support`.

mod huawei;
mod support;
mod tencent;
