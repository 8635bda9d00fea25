//! Feeds arbitrary bytes to the policy parser. It must never panic, and
//! every diagnostic must point inside the input.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::policy::parse_str;

fuzz_target!(|data: &[u8]| {
    // Policy files are UTF-8; load_paths rejects anything else before
    // parsing, so only text is worth the fuzzer's time.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_str(Path::new("fuzz.toml"), text) {
        Ok(segments) => {
            for segment in &segments {
                assert!(!segment.ports.is_empty(), "{segment:?}");
                if let Some(jit) = &segment.jit {
                    assert!(jit.default_ttl <= jit.max_ttl, "{jit:?}");
                }
            }
        }
        Err(diagnostics) => {
            assert!(diagnostics.has_errors());
            let last_line = text.lines().count() + 1;
            for diagnostic in &diagnostics {
                if let Some(location) = &diagnostic.location {
                    assert!(
                        (1..=last_line).contains(&location.line) && location.column >= 1,
                        "{diagnostic}"
                    );
                }
            }
        }
    }
});
