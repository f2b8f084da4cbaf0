//! Any bytes as a policy file: the parser reports problems, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = teamgate::domain::policy::Policy::parse(src);
    }
});
