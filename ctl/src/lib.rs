//! The library half of `sluicectl`: the admin API client, shared with `sluice-bench` so both
//! talk to control the same way. The CLI itself is the `sluicectl` binary (`main.rs`).
#![deny(unsafe_code)]

pub mod admin_http;
