//! Every frontend-message parser (what a client sends pgmulti) on arbitrary bodies, with the
//! lazily-decoded lists iterated, and a round trip through the builders for what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::frontend::{self, *};

/// The body of the one message `out` holds.
fn body(out: &[u8]) -> &[u8] {
    &out[5..]
}

fuzz_target!(|data: &[u8]| {
    if let Ok(sql) = parse_query(data) {
        let mut out = Vec::new();
        frontend::query(&mut out, sql);
        assert_eq!(body(&out), data, "Query does not round-trip");
    }

    if let Ok(p) = parse_parse(data) {
        let types: Vec<u32> = p.param_types.iter().collect();
        assert_eq!(types.len(), p.param_types.len());
        assert_eq!(p.param_types.is_empty(), types.is_empty());
        let mut out = Vec::new();
        frontend::parse_message(&mut out, p.statement, p.query, &types);
        assert_eq!(body(&out), data, "Parse does not round-trip");
    }

    if let Ok(b) = parse_bind(data) {
        let formats: Vec<i16> = b.param_formats.iter().collect();
        let params: Vec<Option<&[u8]>> = b.params.iter().collect();
        let results: Vec<i16> = b.result_formats.iter().collect();
        assert_eq!(formats.len(), b.param_formats.len());
        assert_eq!(
            params.len(),
            b.params.len(),
            "BindParams count and iterator differ"
        );
        assert_eq!(b.params.is_empty(), params.is_empty());
        assert_eq!(results.len(), b.result_formats.len());
        let mut out = Vec::new();
        frontend::bind_message(&mut out, b.portal, b.statement, &formats, &params, &results);
        assert_eq!(body(&out), data, "Bind does not round-trip");
    }

    if let Ok((portal, max_rows)) = parse_execute(data) {
        let mut out = Vec::new();
        frontend::execute_message(&mut out, portal, max_rows);
        assert_eq!(body(&out), data, "Execute does not round-trip");
    }

    if let Ok((kind, name)) = parse_describe_or_close(data) {
        assert!(kind == b'S' || kind == b'P');
        let mut out = Vec::new();
        frontend::close_message(&mut out, kind, name);
        assert_eq!(body(&out), data, "Close does not round-trip");
    }

    if let Ok(password) = parse_password_message(data) {
        assert!(!password.contains(&0));
        let mut out = Vec::new();
        frontend::password_message(&mut out, password);
        assert_eq!(body(&out), data, "PasswordMessage does not round-trip");
    }

    if let Ok((mechanism, sasl)) = parse_sasl_initial_response(data) {
        let mut out = Vec::new();
        frontend::sasl_initial_response(&mut out, mechanism, sasl);
        // A length of -1 (no data) is rebuilt as 0: compare the decoded fields instead.
        assert_eq!(
            parse_sasl_initial_response(body(&out)),
            Ok((mechanism, sasl)),
            "SASLInitialResponse does not round-trip"
        );
    }

    assert_eq!(parse_sasl_response(data), data);
});
