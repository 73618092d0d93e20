//! Enables the AVX-512 SHA-1 kernel (`srtp::sha1mb`) when the compiler is new enough: its
//! intrinsics are stable since Rust 1.89, while the crate builds from 1.85 (AVX2 only there).

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(sluice_avx512)");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        // "rustc 1.95.0 (...)": the second field's minor version.
        .and_then(|v| {
            v.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo:rustc-cfg=sluice_avx512");
    }
}
