//! Messages a backend (server) sends: builders for pgmulti answering its clients itself
//! (authentication, ErrorResponse, admin console results), and parsers for what the nodes say
//! during startup and at the end of each statement.
//!
//! Builders append one whole frame to the caller's `Vec<u8>`; parsers take the body after the
//! 5-byte header and borrow from it. No allocation, no panic on malformed input.

use super::framing::{
    begin_message, finish_message, put_cstr, put_i16, put_i32, put_u32, DecodeError, Reader,
};
use super::ProtocolError;

/// Type OID of `text`, used for every column pgmulti describes itself.
pub const TEXT_OID: u32 = 25;

/// Authentication request codes (the Int32 after the 'R' header).
pub const AUTH_OK: u32 = 0;
pub const AUTH_KERBEROS_V5: u32 = 2;
pub const AUTH_CLEARTEXT_PASSWORD: u32 = 3;
pub const AUTH_MD5_PASSWORD: u32 = 5;
pub const AUTH_SCM_CREDENTIAL: u32 = 6;
pub const AUTH_GSS: u32 = 7;
pub const AUTH_GSS_CONTINUE: u32 = 8;
pub const AUTH_SSPI: u32 = 9;
pub const AUTH_SASL: u32 = 10;
pub const AUTH_SASL_CONTINUE: u32 = 11;
pub const AUTH_SASL_FINAL: u32 = 12;

fn put_field(out: &mut Vec<u8>, code: u8, value: &str) {
    out.push(code);
    put_cstr(out, value.as_bytes());
}

/// ErrorResponse ('E') with fields S, V (same severity), C, M and, when given, D and H.
pub fn error_response(
    out: &mut Vec<u8>,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let start = begin_message(out, b'E');
    put_field(out, b'S', severity);
    put_field(out, b'V', severity);
    put_field(out, b'C', code);
    put_field(out, b'M', message);
    if let Some(detail) = detail {
        put_field(out, b'D', detail);
    }
    if let Some(hint) = hint {
        put_field(out, b'H', hint);
    }
    out.push(0);
    finish_message(out, start);
}

/// NoticeResponse ('N') with fields S, V (same severity), C and M.
pub fn notice_response(out: &mut Vec<u8>, severity: &str, code: &str, message: &str) {
    let start = begin_message(out, b'N');
    put_field(out, b'S', severity);
    put_field(out, b'V', severity);
    put_field(out, b'C', code);
    put_field(out, b'M', message);
    out.push(0);
    finish_message(out, start);
}

fn authentication(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    let start = begin_message(out, b'R');
    put_u32(out, code);
    out.extend_from_slice(data);
    finish_message(out, start);
}

pub fn authentication_ok(out: &mut Vec<u8>) {
    authentication(out, AUTH_OK, &[]);
}

pub fn authentication_cleartext_password(out: &mut Vec<u8>) {
    authentication(out, AUTH_CLEARTEXT_PASSWORD, &[]);
}

pub fn authentication_md5_password(out: &mut Vec<u8>, salt: [u8; 4]) {
    authentication(out, AUTH_MD5_PASSWORD, &salt);
}

/// AuthenticationSASL: the mechanisms offered, in order of preference.
pub fn authentication_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    let start = begin_message(out, b'R');
    put_u32(out, AUTH_SASL);
    for m in mechanisms {
        put_cstr(out, m.as_bytes());
    }
    out.push(0);
    finish_message(out, start);
}

pub fn authentication_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, AUTH_SASL_CONTINUE, data);
}

pub fn authentication_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, AUTH_SASL_FINAL, data);
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    let start = begin_message(out, b'S');
    put_cstr(out, name.as_bytes());
    put_cstr(out, value.as_bytes());
    finish_message(out, start);
}

pub fn backend_key_data(out: &mut Vec<u8>, process_id: u32, secret_key: u32) {
    let start = begin_message(out, b'K');
    put_u32(out, process_id);
    put_u32(out, secret_key);
    finish_message(out, start);
}

/// An error as protocol 1 and 2 sent it: 'E' and a NUL-terminated line, no length. PostgreSQL
/// still answers a client asking for those versions this way.
pub fn error_response_legacy(out: &mut Vec<u8>, severity: &str, message: &str) {
    out.push(b'E');
    out.extend_from_slice(format!("{severity}:  {message}\n").as_bytes());
    out.push(0);
}

/// NegotiateProtocolVersion ('v'): the newest version this server speaks (PostgreSQL sends the
/// whole version number, 3.0 = 196608) and the protocol options it does not know.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest: u32, options: &[&str]) {
    let start = begin_message(out, b'v');
    put_u32(out, newest);
    put_i32(out, options.len() as i32);
    for o in options {
        put_cstr(out, o.as_bytes());
    }
    finish_message(out, start);
}

/// ReadyForQuery ('Z'); `status` is the transaction status `b'I'`, `b'T'` or `b'E'`.
pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    let start = begin_message(out, b'Z');
    out.push(status);
    finish_message(out, start);
}

pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
    let start = begin_message(out, b'C');
    put_cstr(out, tag.as_bytes());
    finish_message(out, start);
}

/// RowDescription ('T') of text columns (type OID 25, text format, no source table).
pub fn row_description(out: &mut Vec<u8>, columns: &[&str]) {
    let start = begin_message(out, b'T');
    put_i16(out, columns.len() as i16);
    for name in columns {
        put_cstr(out, name.as_bytes());
        put_u32(out, 0); // table OID
        put_i16(out, 0); // column attribute number
        put_u32(out, TEXT_OID);
        put_i16(out, -1); // typlen: variable
        put_i32(out, -1); // typmod
        put_i16(out, 0); // text format
    }
    finish_message(out, start);
}

/// DataRow ('D') of text values; `None` is SQL NULL.
pub fn data_row(out: &mut Vec<u8>, values: &[Option<&str>]) {
    let start = begin_message(out, b'D');
    put_i16(out, values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                put_i32(out, v.len() as i32);
                out.extend_from_slice(v.as_bytes());
            }
            None => put_i32(out, -1),
        }
    }
    finish_message(out, start);
}

/// A message without a body: BindComplete `2`, NoData `n`, ParseComplete `1`, …
pub fn empty_message(out: &mut Vec<u8>, tag: u8) {
    out.push(tag);
    out.extend_from_slice(&4i32.to_be_bytes());
}

pub fn empty_query_response(out: &mut Vec<u8>) {
    let start = begin_message(out, b'I');
    finish_message(out, start);
}

/// A decoded Authentication ('R') message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: SaslMechanisms<'a>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// KerberosV5, SCMCredential, GSS, GSSContinue, SSPI or an unknown code.
    Other(u32),
}

/// The mechanisms of an AuthenticationSASL, validated at parse time; an iterator over the
/// names in the server's order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslMechanisms<'a> {
    /// `name\0name\0…` not yet yielded, without the final terminator.
    rest: &'a str,
}

impl SaslMechanisms<'_> {
    /// Whether the server offers `mechanism` (does not advance the iterator).
    pub fn contains(&self, mechanism: &str) -> bool {
        self.clone().any(|m| m == mechanism)
    }
}

impl<'a> Iterator for SaslMechanisms<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let (name, rest) = self.rest.split_once('\0')?;
        self.rest = rest;
        Some(name)
    }
}

/// Validate a list of non-empty NUL-terminated names ended by an empty one (the final NUL is
/// the last byte) and return it without the final terminator.
pub(crate) fn parse_name_list(bytes: &[u8]) -> Result<&str, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    let mut r = Reader::new(bytes);
    loop {
        if r.cstr_bytes()?.is_empty() {
            break;
        }
    }
    r.finish()?;
    Ok(text.get(..text.len().saturating_sub(1)).unwrap_or_default())
}

pub fn parse_authentication(body: &[u8]) -> Result<Authentication<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let code = r.u32()?;
    let auth = match code {
        AUTH_OK => Authentication::Ok,
        AUTH_CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
        AUTH_MD5_PASSWORD => {
            let salt = r
                .bytes(4)?
                .try_into()
                .map_err(|_| DecodeError::UnexpectedEnd)?;
            Authentication::Md5Password { salt }
        }
        AUTH_SASL => {
            let list = parse_name_list(r.take_rest())?;
            Authentication::Sasl {
                mechanisms: SaslMechanisms { rest: list },
            }
        }
        AUTH_SASL_CONTINUE => Authentication::SaslContinue(r.take_rest()),
        AUTH_SASL_FINAL => Authentication::SaslFinal(r.take_rest()),
        other => {
            r.take_rest();
            Authentication::Other(other)
        }
    };
    r.finish()?;
    Ok(auth)
}

/// `(process_id, secret_key)` of a BackendKeyData body (protocol 3.0: exactly 8 bytes).
pub fn parse_backend_key_data(body: &[u8]) -> Result<(u32, u32), ProtocolError> {
    let mut r = Reader::new(body);
    let process_id = r.u32()?;
    let secret_key = r.u32()?;
    r.finish()?;
    Ok((process_id, secret_key))
}

/// `(name, value)` of a ParameterStatus body.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let name = r.cstr()?;
    let value = r.cstr()?;
    r.finish()?;
    Ok((name, value))
}

/// The transaction status of a ReadyForQuery body: `b'I'` idle, `b'T'` in a transaction
/// block, `b'E'` in a failed transaction block.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, ProtocolError> {
    let mut r = Reader::new(body);
    let status = r.u8()?;
    r.finish()?;
    match status {
        b'I' | b'T' | b'E' => Ok(status),
        _ => Err(ProtocolError(format!(
            "invalid transaction status {status} in ReadyForQuery"
        ))),
    }
}

/// The fields of an ErrorResponse or NoticeResponse pgmulti cares about. A field the server
/// did not send is "" (severity, code, message) or `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

/// Decode an ErrorResponse or NoticeResponse body. The non-localized severity (V) wins over
/// the localized one (S); unknown field types are skipped.
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields<'_>, ProtocolError> {
    let mut fields = ErrorFields {
        severity: "",
        code: "",
        message: "",
        detail: None,
        hint: None,
    };
    let mut localized_severity = "";
    let mut r = Reader::new(body);
    loop {
        let field = r.u8()?;
        if field == 0 {
            break;
        }
        let value = r.cstr()?;
        match field {
            b'S' => localized_severity = value,
            b'V' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            b'D' => fields.detail = Some(value),
            b'H' => fields.hint = Some(value),
            _ => {}
        }
    }
    r.finish()?;
    if fields.severity.is_empty() {
        fields.severity = localized_severity;
    }
    Ok(fields)
}

/// An ErrorResponse too large to hold whole, rebuilt from the start of its body that did
/// arrive (`prefix`; `len` is the whole message's length). Every field that arrived whole
/// is kept as it was — a short message with a huge CONTEXT (a stack of 10,000 function
/// calls) keeps its message intact — and the field the cut fell in keeps its start, marked
/// as cut. Fields after it are lost. A SQLSTATE that did not arrive whole is XX000.
pub fn shortened_error(prefix: &[u8], len: usize, out: &mut Vec<u8>) {
    let mark = format!(" … (an error of {len} bytes, cut by pgmulti)");
    let mut fields: Vec<(u8, &[u8])> = Vec::new();
    let mut cut = None;
    let mut rest = prefix;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        match tail.iter().position(|&b| b == 0) {
            Some(n) => {
                fields.push((field, &tail[..n]));
                rest = &tail[n + 1..];
            }
            None => {
                // Cut inside a character: keep the characters that are whole.
                let whole = match std::str::from_utf8(tail) {
                    Ok(_) => tail.len(),
                    Err(e) => e.valid_up_to(),
                };
                // A severity or SQLSTATE is worth nothing in part.
                if !matches!(field, b'S' | b'V' | b'C') {
                    cut = Some((field, &tail[..whole]));
                }
                break;
            }
        }
    }
    let has = |f: u8| fields.iter().any(|(x, _)| *x == f);
    let start = begin_message(out, b'E');
    let severity = fields
        .iter()
        .find(|(f, _)| matches!(f, b'V' | b'S'))
        .map_or(&b"ERROR"[..], |(_, v)| v);
    let severity = String::from_utf8_lossy(severity);
    let severity = severity.as_bytes();
    if !has(b'S') {
        put_field_bytes(out, b'S', severity);
    }
    if !has(b'V') && !has(b'S') {
        put_field_bytes(out, b'V', severity);
    }
    if !has(b'C') {
        put_field(out, b'C', "XX000");
    }
    // (A field that is not UTF-8 is made so: the rebuilt error must parse.)
    for (f, v) in &fields {
        put_field_bytes(out, *f, String::from_utf8_lossy(v).as_bytes());
    }
    match cut {
        Some((f, v)) => {
            out.push(f);
            out.extend_from_slice(v);
            out.extend_from_slice(mark.as_bytes());
            out.push(0);
        }
        // Only whole fields after the message are lost.
        None if has(b'M') => put_field(out, b'W', mark.trim_start()),
        None => {}
    }
    if !has(b'M') && cut.is_none_or(|(f, _)| f != b'M') {
        put_field(out, b'M', mark.trim_start());
    }
    out.push(0);
    finish_message(out, start);
}

/// The value of field `field` of an ErrorResponse or NoticeResponse body (`P`: the
/// position), if present and well formed.
pub fn error_field(body: &[u8], field: u8) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        if f == 0 {
            return None;
        }
        let n = tail.iter().position(|&b| b == 0)?;
        if f == field {
            return Some(&tail[..n]);
        }
        rest = &tail[n + 1..];
    }
    None
}

/// The ErrorResponse or NoticeResponse `msg` (whole, tag included) with field `field` set
/// to `value` (added at the end when it has none), into `out`.
pub fn with_error_field(msg: &[u8], field: u8, value: &str, out: &mut Vec<u8>) {
    let start = begin_message(out, msg.first().copied().unwrap_or(b'E'));
    let mut rest = msg.get(5..).unwrap_or_default();
    while let Some((&f, tail)) = rest.split_first() {
        let Some(n) = tail.iter().position(|&b| b == 0).filter(|_| f != 0) else {
            break;
        };
        if f != field {
            put_field_bytes(out, f, &tail[..n]);
        }
        rest = &tail[n + 1..];
    }
    put_field(out, field, value);
    out.push(0);
    finish_message(out, start);
}

fn put_field_bytes(out: &mut Vec<u8>, field: u8, value: &[u8]) {
    out.push(field);
    out.extend_from_slice(value);
    out.push(0);
}

/// One field of a DataRow: its value (None for NULL) and the offset just past it.
pub type RowField<'a> = (Option<&'a [u8]>, usize);

/// The fields of a DataRow body, so that a row can be read and cut after any field
/// (`cut_row`).
pub fn data_row_fields(body: &[u8]) -> Result<Vec<RowField<'_>>, ProtocolError> {
    let mut r = Reader::new(body);
    let count = r.count16()?;
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.i32()?;
        let value = match usize::try_from(len) {
            Ok(n) => Some(r.bytes(n)?),
            Err(_) if len == -1 => None,
            Err(_) => {
                return Err(ProtocolError(format!(
                    "invalid field length {len} in DataRow"
                )))
            }
        };
        fields.push((value, body.len() - r.remaining()));
    }
    r.finish()?;
    Ok(fields)
}

/// The offset in a RowDescription body just past each field's description.
pub fn row_description_ends(body: &[u8]) -> Result<Vec<usize>, ProtocolError> {
    let mut r = Reader::new(body);
    let count = r.count16()?;
    let mut ends = Vec::with_capacity(count);
    for _ in 0..count {
        r.cstr_bytes()?;
        r.bytes(18)?; // table OID, attribute number, type OID, typlen, typmod, format
        ends.push(body.len() - r.remaining());
    }
    r.finish()?;
    Ok(ends)
}

/// A DataRow or RowDescription (`tag`) with only its first `keep` fields, which end at `end`
/// in `body` (from `data_row_fields` or `row_description_ends`; 2 when `keep` is 0).
pub fn cut_row(out: &mut Vec<u8>, tag: u8, body: &[u8], keep: usize, end: usize) {
    let start = begin_message(out, tag);
    put_i16(out, keep as i16);
    out.extend_from_slice(&body[2..end]);
    finish_message(out, start);
}

/// The number of rows a CommandComplete tag reports: "INSERT 0 5" → 5, "UPDATE 3" → 3,
/// "SELECT 10" → 10, "COPY 7" → 7; `None` for tags without a row count ("CREATE TABLE").
pub fn command_tag_rows(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    let expected_words = match command {
        "INSERT" => 2,
        "DELETE" | "UPDATE" | "SELECT" | "MOVE" | "FETCH" | "COPY" | "MERGE" => 1,
        _ => return None,
    };
    let numbers = words.clone().count();
    if numbers != expected_words {
        return None;
    }
    let rows = words.next_back()?;
    if rows.is_empty() || !rows.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rows.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::framing::message_header;
    use super::super::MAX_MESSAGE_LEN;
    use super::*;

    fn frame(buf: &[u8]) -> (u8, &[u8]) {
        let (tag, total) = message_header(buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(total, buf.len());
        (tag, &buf[5..])
    }

    #[test]
    fn a_cut_error_keeps_its_severity_code_and_start() {
        let mut whole = Vec::new();
        let long = "x".repeat(40_000);
        error_response(&mut whole, "ERROR", "22P02", &long, None, None);
        let mut out = Vec::new();
        shortened_error(&whole[5..1000], whole.len(), &mut out);
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'E');
        let f = parse_error_fields(body).unwrap();
        assert_eq!((f.severity, f.code), ("ERROR", "22P02"));
        assert!(f.message.starts_with("xxx"), "{}", f.message);
        assert!(f.message.ends_with(&format!(
            "(an error of {} bytes, cut by pgmulti)",
            whole.len()
        )));
        // Cut inside the code: the code is not trusted.
        let mut out = Vec::new();
        shortened_error(&whole[5..20], whole.len(), &mut out);
        let f = parse_error_fields(frame(&out).1).unwrap();
        assert_eq!((f.severity, f.code), ("ERROR", "XX000"));
        assert!(f.message.contains("cut by pgmulti"), "{}", f.message);
    }

    /// Found by fuzz/ (backend, finding 6): a whole field that is not UTF-8 was copied as
    /// it was, and the rebuilt error did not parse.
    #[test]
    fn a_cut_error_with_a_field_that_is_not_utf8_still_parses() {
        let prefix = b"SERROR\0C22P02\0Mbad \xff\xfe value\0Wcontext cut he";
        let mut out = Vec::new();
        shortened_error(prefix, 100_000, &mut out);
        let f = parse_error_fields(frame(&out).1).unwrap();
        assert_eq!(f.code, "22P02");
        assert!(f.message.starts_with("bad "), "{}", f.message);
    }

    /// `stack depth limit exceeded` with a CONTEXT of 160 kB: the message stays whole,
    /// the context is cut, as psql's `\echo :LAST_ERROR_MESSAGE` shows.
    #[test]
    fn a_cut_context_leaves_the_message_whole() {
        let mut whole = Vec::new();
        let start = begin_message(&mut whole, b'E');
        for (f, v) in [(b'S', "ERROR"), (b'V', "ERROR"), (b'C', "54001")] {
            put_field(&mut whole, f, v);
        }
        put_field(&mut whole, b'M', "stack depth limit exceeded");
        put_field(&mut whole, b'H', "Increase the configuration parameter");
        put_field(
            &mut whole,
            b'W',
            &"SQL function \"f\" statement 1\n".repeat(5000),
        );
        whole.push(0);
        finish_message(&mut whole, start);
        let mut out = Vec::new();
        // A cut inside a character (é is 2 bytes) keeps the whole ones.
        let mut prefix = whole[5..2000].to_vec();
        prefix.extend_from_slice("é".as_bytes());
        prefix.pop();
        shortened_error(&prefix, whole.len(), &mut out);
        let f = parse_error_fields(frame(&out).1).unwrap();
        assert_eq!((f.severity, f.code), ("ERROR", "54001"));
        assert_eq!(f.message, "stack depth limit exceeded");
        assert_eq!(f.hint, Some("Increase the configuration parameter"));
        let body = String::from_utf8(frame(&out).1.to_vec()).unwrap();
        assert!(body.contains("SQL function \"f\" statement 1"), "{body}");
        assert!(body.contains("cut by pgmulti"));
    }

    #[test]
    fn an_error_field_is_read_and_replaced() {
        let mut e = Vec::new();
        error_response(&mut e, "ERROR", "22P02", "bad", None, Some("h"));
        assert_eq!(error_field(&e[5..], b'C'), Some(&b"22P02"[..]));
        assert_eq!(error_field(&e[5..], b'P'), None);
        let mut with = Vec::new();
        with_error_field(&e, b'P', "17", &mut with);
        let mut again = Vec::new();
        with_error_field(&with, b'P', "5", &mut again);
        let (tag, body) = frame(&again);
        assert_eq!(tag, b'E');
        assert_eq!(error_field(body, b'P'), Some(&b"5"[..]));
        let f = parse_error_fields(body).unwrap();
        assert_eq!((f.code, f.message, f.hint), ("22P02", "bad", Some("h")));
    }

    #[test]
    fn error_response_round_trip() {
        let mut out = Vec::new();
        error_response(
            &mut out,
            "FATAL",
            "28P01",
            "password authentication failed for user \"bob\"",
            Some("no such user"),
            Some("check auth_file"),
        );
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'E');
        assert!(body.starts_with(b"SFATAL\0VFATAL\0C28P01\0M"));
        let f = parse_error_fields(body).unwrap();
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "password authentication failed for user \"bob\"");
        assert_eq!(f.detail, Some("no such user"));
        assert_eq!(f.hint, Some("check auth_file"));

        out.clear();
        error_response(&mut out, "ERROR", "42601", "syntax error", None, None);
        let f = parse_error_fields(frame(&out).1).unwrap();
        assert_eq!((f.detail, f.hint), (None, None));
    }

    #[test]
    fn notice_response_round_trip() {
        let mut out = Vec::new();
        notice_response(&mut out, "NOTICE", "00000", "hello");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'N');
        let f = parse_error_fields(body).unwrap();
        assert_eq!(
            (f.severity, f.code, f.message),
            ("NOTICE", "00000", "hello")
        );
    }

    #[test]
    fn error_fields_prefer_v_over_s_and_skip_unknown() {
        let body = b"SFEHLER\0Pposition 3\0VERROR\0C42P01\0Mno\0\0";
        let f = parse_error_fields(body).unwrap();
        assert_eq!(f.severity, "ERROR");
        let body = b"SFEHLER\0C42P01\0Mno\0\0";
        assert_eq!(parse_error_fields(body).unwrap().severity, "FEHLER");
        assert!(parse_error_fields(b"SERROR\0").is_err());
        assert!(parse_error_fields(b"SERROR").is_err());
        assert!(parse_error_fields(b"").is_err());
        assert!(parse_error_fields(b"\0x").is_err());
    }

    #[test]
    fn authentication_round_trips() {
        let mut out = Vec::new();
        authentication_ok(&mut out);
        assert_eq!(out, b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(parse_authentication(frame(&out).1), Ok(Authentication::Ok));

        out.clear();
        authentication_cleartext_password(&mut out);
        assert_eq!(
            parse_authentication(frame(&out).1),
            Ok(Authentication::CleartextPassword)
        );

        out.clear();
        authentication_md5_password(&mut out, [1, 2, 3, 4]);
        assert_eq!(
            parse_authentication(frame(&out).1),
            Ok(Authentication::Md5Password { salt: [1, 2, 3, 4] })
        );

        out.clear();
        authentication_sasl(&mut out, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let Ok(Authentication::Sasl { mechanisms }) = parse_authentication(frame(&out).1) else {
            panic!("not SASL");
        };
        assert_eq!(
            mechanisms.clone().collect::<Vec<_>>(),
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        assert!(mechanisms.contains("SCRAM-SHA-256"));
        assert!(!mechanisms.contains("SCRAM"));

        out.clear();
        authentication_sasl_continue(&mut out, b"r=abc,s=xyz,i=4096");
        assert_eq!(
            parse_authentication(frame(&out).1),
            Ok(Authentication::SaslContinue(b"r=abc,s=xyz,i=4096"))
        );

        out.clear();
        authentication_sasl_final(&mut out, b"v=sig");
        assert_eq!(
            parse_authentication(frame(&out).1),
            Ok(Authentication::SaslFinal(b"v=sig"))
        );

        assert_eq!(
            parse_authentication(b"\0\0\0\x07"),
            Ok(Authentication::Other(AUTH_GSS))
        );
        assert_eq!(
            parse_authentication(b"\0\0\0\x08token"),
            Ok(Authentication::Other(AUTH_GSS_CONTINUE))
        );
    }

    #[test]
    fn authentication_rejects_malformed() {
        assert!(parse_authentication(b"").is_err());
        assert!(parse_authentication(b"\0\0\0").is_err());
        assert!(parse_authentication(b"\0\0\0\0x").is_err());
        assert!(parse_authentication(b"\0\0\0\x05\x01\x02").is_err());
        assert!(parse_authentication(b"\0\0\0\x05\x01\x02\x03\x04\x05").is_err());
        // SASL list without the final terminator, with bytes after it, with bad UTF-8.
        assert!(parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err());
        assert!(parse_authentication(b"\0\0\0\x0aSCRAM-SHA-256\0\0x").is_err());
        assert!(parse_authentication(b"\0\0\0\x0a\xff\0\0").is_err());
        assert!(parse_authentication(b"\0\0\0\x0a").is_err());
        // An empty list is well formed.
        assert!(matches!(
            parse_authentication(b"\0\0\0\x0a\0"),
            Ok(Authentication::Sasl { mechanisms }) if mechanisms.clone().count() == 0
        ));
    }

    #[test]
    fn backend_key_data_round_trip() {
        let mut out = Vec::new();
        backend_key_data(&mut out, 77, 0xfeed_f00d);
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'K');
        assert_eq!(parse_backend_key_data(body), Ok((77, 0xfeed_f00d)));
        assert!(parse_backend_key_data(&body[..7]).is_err());
        assert!(parse_backend_key_data(b"123456789").is_err());
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut out = Vec::new();
        parameter_status(&mut out, "client_encoding", "UTF8");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'S');
        assert_eq!(
            parse_parameter_status(body),
            Ok(("client_encoding", "UTF8"))
        );
        assert!(parse_parameter_status(b"a\0b").is_err());
        assert!(parse_parameter_status(b"a\0b\0c").is_err());
    }

    #[test]
    fn ready_for_query_round_trip() {
        for status in [b'I', b'T', b'E'] {
            let mut out = Vec::new();
            ready_for_query(&mut out, status);
            let (tag, body) = frame(&out);
            assert_eq!(tag, b'Z');
            assert_eq!(parse_ready_for_query(body), Ok(status));
        }
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"X").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }

    #[test]
    fn result_builders_layout() {
        let mut out = Vec::new();
        command_complete(&mut out, "SELECT 1");
        assert_eq!(out, b"C\0\0\0\x0dSELECT 1\0");

        out.clear();
        row_description(&mut out, &["node_id", "host"]);
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'T');
        assert_eq!(&body[..2], &[0, 2]);
        assert_eq!(body.len(), 2 + (8 + 18) + (5 + 18));
        assert_eq!(&body[2 + 8 + 6..2 + 8 + 10], &TEXT_OID.to_be_bytes());

        out.clear();
        data_row(&mut out, &[Some("1"), None, Some("")]);
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'D');
        assert_eq!(body, b"\0\x03\0\0\0\x011\xff\xff\xff\xff\0\0\0\0");

        out.clear();
        empty_query_response(&mut out);
        assert_eq!(out, b"I\0\0\0\x04");
    }

    #[test]
    fn command_tag_row_counts() {
        assert_eq!(command_tag_rows("INSERT 0 5"), Some(5));
        assert_eq!(command_tag_rows("UPDATE 3"), Some(3));
        assert_eq!(command_tag_rows("DELETE 0"), Some(0));
        assert_eq!(command_tag_rows("SELECT 10"), Some(10));
        assert_eq!(command_tag_rows("COPY 7"), Some(7));
        assert_eq!(command_tag_rows("MERGE 2"), Some(2));
        assert_eq!(command_tag_rows("FETCH 4"), Some(4));
        assert_eq!(command_tag_rows("MOVE 1"), Some(1));
        assert_eq!(command_tag_rows("CREATE TABLE"), None);
        assert_eq!(command_tag_rows("BEGIN"), None);
        assert_eq!(command_tag_rows("INSERT 5"), None);
        assert_eq!(command_tag_rows("UPDATE"), None);
        assert_eq!(command_tag_rows("UPDATE x"), None);
        assert_eq!(command_tag_rows("UPDATE +3"), None);
        assert_eq!(command_tag_rows("SELECT 99999999999999999999999"), None);
        assert_eq!(command_tag_rows(""), None);
    }

    #[test]
    fn random_bytes_never_panic_backend_parsers() {
        let mut rng = crate::protocol::describe::tests::Rng::new(13);
        let mut seed = Vec::new();
        error_response(&mut seed, "ERROR", "42P01", "nope", Some("d"), Some("h"));
        let seed = seed[5..].to_vec();
        for i in 0..50_000 {
            let buf = if i % 2 == 0 {
                rng.bytes(24)
            } else {
                rng.mutate(&seed)
            };
            if let Ok(Authentication::Sasl { mechanisms }) = parse_authentication(&buf) {
                let _ = mechanisms.count();
            }
            let _ = parse_backend_key_data(&buf);
            let _ = parse_parameter_status(&buf);
            let _ = parse_ready_for_query(&buf);
            let _ = parse_error_fields(&buf);
            if let Ok(s) = std::str::from_utf8(&buf) {
                let _ = command_tag_rows(s);
            }
        }
    }
}
