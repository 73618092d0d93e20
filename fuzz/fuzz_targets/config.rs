//! Configuration: `Config::from_toml_str` on arbitrary text returns a typed error or a
//! validated config; never panics.
#![no_main]
#![deny(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use contract::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml_str(text, "<fuzz>") {
        // Error messages are built from the input; formatting them must not panic either.
        let _ = e.to_string();
    }
});
