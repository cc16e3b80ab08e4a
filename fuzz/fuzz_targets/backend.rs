//! Every backend-message parser (what a node sends pgmulti) on arbitrary bodies: errors and
//! notices (whole and shortened), DataRow / RowDescription splitting and cutting,
//! authentication requests, and the row count of a CommandComplete tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmulti::protocol::backend::*;
use pgmulti::protocol::framing::message_header;
use pgmulti::protocol::MAX_MESSAGE_LEN;

fuzz_target!(|data: &[u8]| {
    let _ = parse_error_fields(data);
    let _ = parse_backend_key_data(data);
    let _ = parse_parameter_status(data);
    let _ = parse_ready_for_query(data);

    if let Ok(auth) = parse_authentication(data) {
        if let Authentication::Sasl { mechanisms } = auth {
            let _ = mechanisms.contains("SCRAM-SHA-256");
            for m in mechanisms {
                assert!(!m.is_empty() && !m.contains('\0'));
            }
        }
    }

    // A DataRow: every field boundary is a valid place to cut the row (`cut_row`).
    if let Ok(fields) = data_row_fields(data) {
        let mut last = 2;
        for (i, &(_, end)) in fields.iter().enumerate() {
            assert!(end >= last && end <= data.len(), "field ends out of order");
            last = end;
            let mut out = Vec::new();
            cut_row(&mut out, b'D', data, i + 1, end);
            let (tag, total) = message_header(&out, MAX_MESSAGE_LEN).unwrap().unwrap();
            assert_eq!((tag, total), (b'D', out.len()));
            let again = data_row_fields(&out[5..]).expect("a cut DataRow must parse");
            assert_eq!(again.len(), i + 1);
        }
        let mut out = Vec::new();
        cut_row(&mut out, b'D', data, 0, 2);
        assert_eq!(data_row_fields(&out[5..]).map(|f| f.len()), Ok(0));
    }

    if let Ok(ends) = row_description_ends(data) {
        for (i, &end) in ends.iter().enumerate() {
            let mut out = Vec::new();
            cut_row(&mut out, b'T', data, i + 1, end);
            let again = row_description_ends(&out[5..]).expect("a cut RowDescription must parse");
            assert_eq!(again.len(), i + 1);
        }
    }

    if let Ok(tag) = std::str::from_utf8(data) {
        let _ = command_tag_rows(tag);
    }

    // An ErrorResponse too large to keep: an arbitrary prefix and claimed length.
    let (len_bytes, prefix) = data.split_at(data.len().min(8));
    let mut len = [0u8; 8];
    len[..len_bytes.len()].copy_from_slice(len_bytes);
    let len = usize::from_le_bytes(len);
    let mut out = Vec::new();
    shortened_error(prefix, len, &mut out);
    let (tag, total) = message_header(&out, MAX_MESSAGE_LEN)
        .expect("shortened_error builds a valid frame")
        .expect("shortened_error builds a whole frame");
    assert_eq!((tag, total), (b'E', out.len()));
    let fields = parse_error_fields(&out[5..]).expect("shortened_error builds a valid error");
    // The mark is in the field the cut fell in (or a CONTEXT of its own), never lost.
    let mark = b"cut by pgmulti)";
    assert!(out.windows(mark.len()).any(|w| w == mark), "{fields:?}");
    // Setting a field (an error position moved back) keeps a valid error with that value.
    let mut moved = Vec::new();
    with_error_field(&out, b'P', "7", &mut moved);
    let (tag, total) = message_header(&moved, MAX_MESSAGE_LEN)
        .expect("with_error_field builds a valid frame")
        .expect("with_error_field builds a whole frame");
    assert_eq!((tag, total), (b'E', moved.len()));
    assert_eq!(error_field(&moved[5..], b'P'), Some(&b"7"[..]));
    let again = parse_error_fields(&moved[5..]).expect("still a valid error");
    assert_eq!((again.code, again.message), (fields.code, fields.message));
});
