//! The one integration-test binary: each area is a module, and `support`
//! holds the helpers they share.

mod support;

mod config;
