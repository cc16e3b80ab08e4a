//! The configuration file as text (`config::parse`, which `config::load` calls after reading
//! the file), and for what parses: `settings()` (SHOW CONFIG) written back as a file must parse
//! to the same configuration, and the reload helpers.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pgmulti::config;

/// `name = 'value'` lines, quotes doubled inside the value.
fn as_file(settings: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, value) in settings {
        text.push_str(name);
        text.push_str(" = '");
        text.push_str(&value.replace('\'', "''"));
        text.push_str("'\n");
    }
    text
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/fuzz/etc");
    let parsed = config::parse(text, "fuzz.conf", base);
    let cfg = match parsed {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(
                e.0.starts_with("fuzz.conf:"),
                "error without file and line: {e}"
            );
            return;
        }
    };
    assert!(!cfg.backends.is_empty());
    assert!(cfg.reloadable_diff(&cfg).is_empty());
    let settings = cfg.settings();
    let again = config::parse(&as_file(&settings), "fuzz.conf", base)
        .unwrap_or_else(|e| panic!("SHOW CONFIG output does not parse: {e}\n{settings:?}"));
    assert!(
        again == cfg,
        "SHOW CONFIG output parses to another configuration:\n{cfg:?}\n{again:?}"
    );
    let mut reloaded = again.clone();
    reloaded.keep_restart_settings(&cfg);
    assert!(cfg.reloadable_diff(&reloaded).is_empty());
});
