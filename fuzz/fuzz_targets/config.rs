//! `config::parse` (TOML text -> validated `Config`) on arbitrary text. Beyond "no panic":
//! an error always says something (it names a key or carries toml's message).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = chargesite::config::parse(text) {
        assert!(!e.to_string().is_empty());
    }
});
