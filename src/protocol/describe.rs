//! One trace line per protocol message (PgAnalyzer's decoded trace): the message's name in
//! PostgreSQL's words, then its key fields.
//!
//! Formatting appends to the caller's `String` and allocates nothing else. Secrets never reach
//! the line: a 'p' message (PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse)
//! shows only its length, SASL challenge data and the BackendKeyData/CancelRequest secret key
//! are masked. Text is escaped so one message is one line. Malformed or partial bodies are
//! described as far as they go and never cause a panic.

use std::fmt::{Display, Write};

use super::framing::{DecodeError, Reader, StartupPacket};
use super::Direction;

/// Longest query text shown, in bytes of the original text.
pub const QUERY_TEXT_CAP: usize = 2000;
/// Longest name, message or other text field shown, in bytes.
const FIELD_CAP: usize = 256;
/// Most list entries (format codes, OIDs, column names) shown.
const LIST_CAP: usize = 16;

/// Name of a message type in this direction, e.g. `(ToBackend, b'P')` → "Parse",
/// `(ToClient, b'T')` → "RowDescription"; "Unknown" for a tag the protocol does not define.
pub fn message_name(dir: Direction, tag: u8) -> &'static str {
    match dir {
        Direction::ToBackend => match tag {
            b'B' => "Bind",
            b'C' => "Close",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'f' => "CopyFail",
            b'D' => "Describe",
            b'E' => "Execute",
            b'H' => "Flush",
            b'F' => "FunctionCall",
            b'P' => "Parse",
            b'p' => "PasswordMessage",
            b'Q' => "Query",
            b'S' => "Sync",
            b'X' => "Terminate",
            _ => "Unknown",
        },
        Direction::ToClient => match tag {
            b'R' => "Authentication",
            b'K' => "BackendKeyData",
            b'2' => "BindComplete",
            b'3' => "CloseComplete",
            b'C' => "CommandComplete",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'G' => "CopyInResponse",
            b'H' => "CopyOutResponse",
            b'W' => "CopyBothResponse",
            b'D' => "DataRow",
            b'I' => "EmptyQueryResponse",
            b'E' => "ErrorResponse",
            b'V' => "FunctionCallResponse",
            b'v' => "NegotiateProtocolVersion",
            b'n' => "NoData",
            b'N' => "NoticeResponse",
            b'A' => "NotificationResponse",
            b't' => "ParameterDescription",
            b'S' => "ParameterStatus",
            b'1' => "ParseComplete",
            b's' => "PortalSuspended",
            b'Z' => "ReadyForQuery",
            b'T' => "RowDescription",
            _ => "Unknown",
        },
    }
}

/// Append a decoded description of one message to `out`: its name, then its key fields.
///
/// `body` is the message body after the 5-byte header. It may be only a prefix of the body
/// when the message is streamed in pieces (`total_len` is the full message length including
/// the header); then what is there is decoded and the line ends with "(truncated)". A
/// malformed body gives e.g. `Parse (malformed: unexpected end of message)`.
pub fn describe(dir: Direction, tag: u8, body: &[u8], total_len: usize, out: &mut String) {
    let start = out.len();
    let body_len = total_len.saturating_sub(5).max(body.len());
    let truncated = body.len() < body_len;
    let result = {
        let mut d = Decoder {
            r: Reader::new(body),
            body_len,
            prefix_len: body.len(),
            truncated,
            out: &mut *out,
        };
        let result = match dir {
            Direction::ToBackend => describe_frontend(tag, &mut d),
            Direction::ToClient => describe_backend(tag, &mut d),
        };
        result.and_then(|()| d.finish())
    };
    match result {
        Ok(()) => {}
        Err(Stop::Truncated) => out.push_str(" (truncated)"),
        Err(Stop::Malformed(e)) => {
            out.truncate(start);
            out.push_str(message_name(dir, tag));
            let _ = write!(out, " (malformed: {e})");
        }
    }
}

/// Append a description of the untagged first packet: SSLRequest, GSSENCRequest,
/// CancelRequest with its process ID (secret key masked), or StartupMessage with every
/// parameter.
pub fn describe_startup(packet: &StartupPacket<'_>, out: &mut String) {
    match packet {
        StartupPacket::SslRequest => out.push_str("SSLRequest"),
        StartupPacket::GssEncRequest => out.push_str("GSSENCRequest"),
        StartupPacket::CancelRequest { process_id, .. } => {
            let _ = write!(out, "CancelRequest pid={process_id} secret=masked");
        }
        StartupPacket::Startup { version, params } => {
            let _ = write!(out, "StartupMessage {}.{}", version >> 16, version & 0xffff);
            for (name, value) in params.iter() {
                out.push(' ');
                push_escaped(out, name.as_bytes(), FIELD_CAP);
                out.push('=');
                push_escaped(out, value.as_bytes(), FIELD_CAP);
            }
        }
    }
}

/// Why decoding stopped early.
enum Stop {
    /// The body ended, but only because just a prefix of it was given.
    Truncated,
    /// The body breaks the protocol.
    Malformed(DecodeError),
}

/// A `Reader` that knows whether its body is only a prefix, plus the line being written.
struct Decoder<'a, 'o> {
    r: Reader<'a>,
    /// Length of the whole body, of which the reader may hold only a prefix.
    body_len: usize,
    /// Length of the bytes given (the prefix).
    prefix_len: usize,
    truncated: bool,
    out: &'o mut String,
}

impl<'a> Decoder<'a, '_> {
    fn stop(&self, e: DecodeError) -> Stop {
        match e {
            DecodeError::UnexpectedEnd | DecodeError::MissingTerminator if self.truncated => {
                Stop::Truncated
            }
            e => Stop::Malformed(e),
        }
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        self.r.u8().map_err(|e| self.stop(e))
    }

    fn i16(&mut self) -> Result<i16, Stop> {
        self.r.i16().map_err(|e| self.stop(e))
    }

    fn i32(&mut self) -> Result<i32, Stop> {
        self.r.i32().map_err(|e| self.stop(e))
    }

    fn u32(&mut self) -> Result<u32, Stop> {
        self.r.u32().map_err(|e| self.stop(e))
    }

    fn count16(&mut self) -> Result<usize, Stop> {
        self.r.count16().map_err(|e| self.stop(e))
    }

    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        self.r.bytes(n).map(|_| ()).map_err(|e| self.stop(e))
    }

    fn cstr(&mut self) -> Result<&'a [u8], Stop> {
        self.r.cstr_bytes().map_err(|e| self.stop(e))
    }

    /// A NUL-terminated string; when the body is a prefix and the terminator is not in it,
    /// the bytes present and `false`.
    fn cstr_or_prefix(&mut self) -> Result<(&'a [u8], bool), Stop> {
        match self.r.cstr_bytes() {
            Ok(s) => Ok((s, true)),
            Err(DecodeError::MissingTerminator) if self.truncated && !self.r.is_empty() => {
                Ok((self.r.take_rest(), false))
            }
            Err(e) => Err(self.stop(e)),
        }
    }

    /// Bytes of the whole body not yet read, counting those beyond the prefix.
    fn body_rest_len(&self) -> usize {
        let consumed = self.prefix_len.saturating_sub(self.r.remaining());
        self.body_len.saturating_sub(consumed)
    }

    fn skip_rest(&mut self) {
        self.r.take_rest();
    }

    /// A complete body must have been read to its end.
    fn finish(&self) -> Result<(), Stop> {
        if self.truncated {
            return Ok(());
        }
        self.r.finish().map_err(Stop::Malformed)
    }

    fn push(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn put(&mut self, v: impl Display) {
        let _ = write!(self.out, "{v}");
    }

    /// ` label="text"` from a NUL-terminated string (label may be empty).
    fn text_field(&mut self, label: &str, cap: usize) -> Result<(), Stop> {
        let (text, complete) = self.cstr_or_prefix()?;
        self.push(" ");
        self.push(label);
        push_quoted(self.out, text, cap, text.len());
        if complete {
            Ok(())
        } else {
            Err(Stop::Truncated)
        }
    }

    /// ` label=[a,b,…]` of `n` Int16 values.
    fn i16_list(&mut self, label: &str, n: usize) -> Result<(), Stop> {
        let _ = write!(self.out, " {label}=[");
        let mut result = Ok(());
        for i in 0..n {
            match self.i16() {
                Ok(v) => self.list_item(i, n, v),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.push("]");
        result
    }

    /// ` label=[a,b,…]` of `n` Int32 OIDs.
    fn oid_list(&mut self, label: &str, n: usize) -> Result<(), Stop> {
        let _ = write!(self.out, " {label}=[");
        let mut result = Ok(());
        for i in 0..n {
            match self.u32() {
                Ok(v) => self.list_item(i, n, v),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.push("]");
        result
    }

    fn list_item(&mut self, i: usize, n: usize, v: impl Display) {
        if i < LIST_CAP {
            if i > 0 {
                self.push(",");
            }
            self.put(v);
        } else if i == LIST_CAP {
            let _ = write!(self.out, ",…+{}", n - LIST_CAP);
        }
    }

    /// `n` length-prefixed values (Bind parameters, FunctionCall arguments, DataRow columns):
    /// ` label=N (B bytes, K null)`.
    fn values(&mut self, label: &str, n: usize) -> Result<(), Stop> {
        let mut bytes = 0usize;
        let mut nulls = 0usize;
        let mut result = Ok(());
        for _ in 0..n {
            let len = match self.i32() {
                Ok(len) => len,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if len == -1 {
                nulls += 1;
                continue;
            }
            let Ok(len) = usize::try_from(len) else {
                result = Err(Stop::Malformed(DecodeError::Invalid(
                    "invalid value length",
                )));
                break;
            };
            bytes = bytes.saturating_add(len);
            if let Err(e) = self.skip(len) {
                result = Err(e);
                break;
            }
        }
        let _ = write!(self.out, " {label}={n} ({bytes} bytes");
        if nulls > 0 {
            let _ = write!(self.out, ", {nulls} null");
        }
        self.push(")");
        result
    }
}

fn describe_frontend(tag: u8, d: &mut Decoder<'_, '_>) -> Result<(), Stop> {
    match tag {
        b'p' => {
            // Never decode a password or SASL data. A SASLInitialResponse may name a known
            // mechanism, which is not secret.
            let len = d.body_rest_len();
            let _ = write!(d.out, "PasswordMessage/SASL ({len} bytes, masked)");
            if let Some(mechanism) = sasl_initial_mechanism(d.r.rest()) {
                let _ = write!(d.out, " mechanism={mechanism}");
            }
            d.skip_rest();
            return Ok(());
        }
        b'Q' => {
            d.push("Query");
            let (text, complete) = d.cstr_or_prefix()?;
            d.push(" ");
            let full = if complete {
                text.len()
            } else {
                d.body_len.saturating_sub(1)
            };
            push_quoted(d.out, text, QUERY_TEXT_CAP, full);
            return if complete {
                Ok(())
            } else {
                Err(Stop::Truncated)
            };
        }
        _ => {}
    }
    d.push(message_name(Direction::ToBackend, tag));
    match tag {
        b'B' => {
            d.text_field("portal=", FIELD_CAP)?;
            d.text_field("statement=", FIELD_CAP)?;
            let n = d.count16()?;
            d.i16_list("param_formats", n)?;
            let n = d.count16()?;
            d.values("params", n)?;
            let n = d.count16()?;
            d.i16_list("result_formats", n)?;
        }
        b'C' | b'D' => {
            let kind = d.u8()?;
            if kind != b'S' && kind != b'P' {
                return Err(Stop::Malformed(DecodeError::Invalid(
                    "kind is neither 'S' nor 'P'",
                )));
            }
            d.push(if kind == b'S' { " S" } else { " P" });
            d.text_field("", FIELD_CAP)?;
        }
        b'd' => {
            let n = d.body_rest_len();
            d.skip_rest();
            let _ = write!(d.out, " ({n} bytes)");
        }
        b'f' => d.text_field("", FIELD_CAP)?,
        b'E' => {
            d.text_field("portal=", FIELD_CAP)?;
            let max_rows = d.i32()?;
            let _ = write!(d.out, " max_rows={max_rows}");
        }
        b'F' => {
            let oid = d.u32()?;
            let _ = write!(d.out, " oid={oid}");
            let n = d.count16()?;
            d.i16_list("arg_formats", n)?;
            let n = d.count16()?;
            d.values("args", n)?;
            let format = d.i16()?;
            let _ = write!(d.out, " result_format={format}");
        }
        b'P' => {
            d.text_field("statement=", FIELD_CAP)?;
            d.text_field("query=", QUERY_TEXT_CAP)?;
            let n = d.count16()?;
            d.oid_list("param_types", n)?;
        }
        b'c' | b'H' | b'S' | b'X' => {}
        _ => describe_unknown(tag, d),
    }
    Ok(())
}

/// The mechanism of a well-formed SASLInitialResponse naming a known SCRAM mechanism. Only a
/// name from this fixed list is ever returned, so nothing a client typed can leak.
fn sasl_initial_mechanism(body: &[u8]) -> Option<&'static str> {
    let mut r = Reader::new(body);
    let name = r.cstr_bytes().ok()?;
    r.i32().ok()?;
    ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
        .into_iter()
        .find(|m| m.as_bytes() == name)
}

fn describe_unknown(tag: u8, d: &mut Decoder<'_, '_>) {
    let n = d.body_rest_len();
    d.skip_rest();
    if tag.is_ascii_graphic() {
        let _ = write!(d.out, " '{}' ({n} bytes)", tag as char);
    } else {
        let _ = write!(d.out, " 0x{tag:02x} ({n} bytes)");
    }
}

fn describe_backend(tag: u8, d: &mut Decoder<'_, '_>) -> Result<(), Stop> {
    if tag == b'R' {
        return describe_authentication(d);
    }
    d.push(message_name(Direction::ToClient, tag));
    match tag {
        b'K' => {
            let pid = d.u32()?;
            // 4 bytes in protocol 3.0, longer from 3.2 on.
            d.skip_rest();
            let _ = write!(d.out, " pid={pid} secret=masked");
        }
        b'2' | b'3' | b'I' | b'n' | b'1' | b's' | b'c' => {}
        b'C' => d.text_field("", FIELD_CAP)?,
        b'd' => {
            let n = d.body_rest_len();
            d.skip_rest();
            let _ = write!(d.out, " ({n} bytes)");
        }
        b'G' | b'H' | b'W' => {
            match d.u8()? {
                0 => d.push(" format=text"),
                1 => d.push(" format=binary"),
                other => {
                    let _ = write!(d.out, " format={other}");
                }
            }
            let n = d.count16()?;
            let _ = write!(d.out, " columns={n}");
            d.i16_list("formats", n)?;
        }
        b'D' => {
            let n = d.count16()?;
            d.values("columns", n)?;
        }
        b'E' | b'N' => describe_error_fields(d)?,
        b'V' => {
            let len = d.i32()?;
            if len == -1 {
                d.push(" NULL");
            } else {
                let len = usize::try_from(len)
                    .map_err(|_| Stop::Malformed(DecodeError::Invalid("invalid result length")))?;
                let _ = write!(d.out, " ({len} bytes)");
                d.skip(len)?;
            }
        }
        b'v' => {
            let minor = d.i32()?;
            let n = d.i32()?;
            let _ = write!(d.out, " newest_minor={minor} unrecognized=[");
            for i in 0..n.max(0) {
                let name = d.cstr();
                let name = match name {
                    Ok(name) => name,
                    Err(e) => {
                        d.push("]");
                        return Err(e);
                    }
                };
                if i > 0 {
                    d.push(",");
                }
                push_escaped(d.out, name, FIELD_CAP);
            }
            d.push("]");
            if n < 0 {
                return Err(Stop::Malformed(DecodeError::Invalid("negative count")));
            }
        }
        b'A' => {
            let pid = d.u32()?;
            let _ = write!(d.out, " pid={pid}");
            d.text_field("channel=", FIELD_CAP)?;
            let payload = d.cstr()?;
            let _ = write!(d.out, " payload=({} bytes)", payload.len());
        }
        b't' => {
            let n = d.count16()?;
            let _ = write!(d.out, " params={n}");
            d.oid_list("types", n)?;
        }
        b'S' => {
            let (name, complete) = d.cstr_or_prefix()?;
            d.push(" ");
            push_escaped(d.out, name, FIELD_CAP);
            if !complete {
                return Err(Stop::Truncated);
            }
            let (value, complete) = d.cstr_or_prefix()?;
            d.push("=");
            push_escaped(d.out, value, FIELD_CAP);
            if !complete {
                return Err(Stop::Truncated);
            }
        }
        b'Z' => {
            let status = match d.u8()? {
                b'I' => " I (idle)",
                b'T' => " T (in transaction)",
                b'E' => " E (failed transaction)",
                _ => {
                    return Err(Stop::Malformed(DecodeError::Invalid(
                        "invalid transaction status",
                    )))
                }
            };
            d.push(status);
        }
        b'T' => {
            let n = d.count16()?;
            let _ = write!(d.out, " columns={n} [");
            let mut result = Ok(());
            for i in 0..n {
                let column = d.cstr_or_prefix();
                let (name, complete) = match column {
                    Ok(c) => c,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                if i < LIST_CAP {
                    if i > 0 {
                        d.push(",");
                    }
                    push_escaped(d.out, name, 64);
                } else if i == LIST_CAP {
                    let _ = write!(d.out, ",…+{}", n - LIST_CAP);
                }
                if !complete {
                    result = Err(Stop::Truncated);
                    break;
                }
                // Table OID, attribute number, type OID, typlen, typmod, format code.
                if let Err(e) = d.skip(18) {
                    result = Err(e);
                    break;
                }
            }
            d.push("]");
            result?;
        }
        _ => describe_unknown(tag, d),
    }
    Ok(())
}

fn describe_authentication(d: &mut Decoder<'_, '_>) -> Result<(), Stop> {
    let code = match d.u32() {
        Ok(code) => code,
        Err(e) => {
            d.push("Authentication");
            return Err(e);
        }
    };
    let name = match code {
        0 => "AuthenticationOk",
        2 => "AuthenticationKerberosV5",
        3 => "AuthenticationCleartextPassword",
        5 => "AuthenticationMD5Password",
        6 => "AuthenticationSCMCredential",
        7 => "AuthenticationGSS",
        8 => "AuthenticationGSSContinue",
        9 => "AuthenticationSSPI",
        10 => "AuthenticationSASL",
        11 => "AuthenticationSASLContinue",
        12 => "AuthenticationSASLFinal",
        _ => "Authentication",
    };
    d.push(name);
    match code {
        0 | 2 | 3 | 6 | 7 | 9 => {}
        5 => d.skip(4)?, // the salt: not secret, but of no use in a trace
        8 | 11 | 12 => {
            let n = d.body_rest_len();
            d.skip_rest();
            let _ = write!(d.out, " ({n} bytes, masked)");
        }
        10 => {
            d.push(" mechanisms=[");
            let mut first = true;
            loop {
                let mechanism = match d.cstr() {
                    Ok(m) => m,
                    Err(e) => {
                        d.push("]");
                        return Err(e);
                    }
                };
                if mechanism.is_empty() {
                    break;
                }
                if !first {
                    d.push(",");
                }
                first = false;
                push_escaped(d.out, mechanism, FIELD_CAP);
            }
            d.push("]");
        }
        _ => {
            let n = d.body_rest_len();
            d.skip_rest();
            let _ = write!(d.out, " subtype={code} ({n} bytes)");
        }
    }
    Ok(())
}

/// `SEVERITY SQLSTATE "message"` of an ErrorResponse or NoticeResponse. Fields may come in
/// any order, so they are collected first and written once the body (or prefix) is read.
fn describe_error_fields(d: &mut Decoder<'_, '_>) -> Result<(), Stop> {
    let mut localized_severity: &[u8] = b"";
    let mut severity: &[u8] = b"";
    let mut code: &[u8] = b"";
    let mut message: Option<&[u8]> = None;
    let mut result = Ok(());
    loop {
        let field = match d.u8() {
            Ok(0) => break,
            Ok(f) => f,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let (value, complete) = match d.cstr_or_prefix() {
            Ok(v) => v,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        match field {
            b'S' => localized_severity = value,
            b'V' => severity = value,
            b'C' => code = value,
            b'M' => message = Some(value),
            _ => {}
        }
        if !complete {
            result = Err(Stop::Truncated);
            break;
        }
    }
    if severity.is_empty() {
        severity = localized_severity;
    }
    if !severity.is_empty() {
        d.push(" ");
        push_escaped(d.out, severity, 32);
    }
    if !code.is_empty() {
        d.push(" ");
        push_escaped(d.out, code, 16);
    }
    if let Some(message) = message {
        d.push(" ");
        push_quoted(d.out, message, QUERY_TEXT_CAP, message.len());
    }
    result
}

/// `"text"` with at most `cap` bytes of `text`, then ` (N bytes cut)` when `full` (the length
/// of the whole text) is longer than what was shown.
fn push_quoted(out: &mut String, text: &[u8], cap: usize, full: usize) {
    out.push('"');
    let shown = push_escaped(out, text, cap);
    out.push('"');
    let full = full.max(text.len());
    if full > shown {
        let _ = write!(out, " ({} bytes cut)", full - shown);
    }
}

/// Append `bytes` so that the result stays on one line: backslash, quote and control
/// characters are escaped, invalid UTF-8 is shown as `\xNN`. Stops before exceeding `cap`
/// input bytes; returns how many input bytes were shown.
pub fn push_escaped(out: &mut String, bytes: &[u8], cap: usize) -> usize {
    let mut used = 0usize;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let n = c.len_utf8();
            if used + n > cap {
                return used;
            }
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
            used += n;
        }
        for &b in chunk.invalid() {
            if used + 1 > cap {
                return used;
            }
            let _ = write!(out, "\\x{b:02x}");
            used += 1;
        }
    }
    used
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::backend;
    use super::super::framing::{message_header, parse_startup, put_i16, put_i32, put_u32};
    use super::super::frontend::{self, tests::bind_body, tests::parse_body};
    use super::super::MAX_MESSAGE_LEN;
    use super::*;
    use Direction::{ToBackend, ToClient};

    /// A small deterministic xorshift generator for the never-panic loops.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Random bytes, biased towards NULs, 0xff and small values so that lengths and
        /// terminators are hit often.
        pub(crate) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len)
                .map(|_| match self.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => self.below(8) as u8,
                    _ => self.next() as u8,
                })
                .collect()
        }

        /// `seed` with a few bytes changed, cut short or extended.
        pub(crate) fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
            let mut v = seed.to_vec();
            for _ in 0..=self.below(3) {
                if v.is_empty() {
                    break;
                }
                let at = self.below(v.len());
                v[at] = match self.below(3) {
                    0 => 0,
                    1 => 0xff,
                    _ => self.next() as u8,
                };
            }
            match self.below(3) {
                0 => v.truncate(self.below(v.len() + 1)),
                1 => v.extend(self.bytes(4)),
                _ => {}
            }
            v
        }
    }

    /// Describe one whole built frame.
    fn desc(dir: Direction, frame: &[u8]) -> String {
        let (tag, total) = message_header(frame, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(total, frame.len());
        let mut s = String::new();
        describe(dir, tag, &frame[5..], total, &mut s);
        s
    }

    /// Describe the first `n` body bytes of a built frame.
    fn desc_prefix(dir: Direction, frame: &[u8], n: usize) -> String {
        let mut s = String::new();
        describe(dir, frame[0], &frame[5..5 + n], frame.len(), &mut s);
        s
    }

    fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn names_of_every_message() {
        let frontend = b"BCdcfDEHFPpQSX";
        for &t in frontend {
            assert_ne!(message_name(ToBackend, t), "Unknown", "{}", t as char);
        }
        let backend = b"RK23CdcGHWDIEVvnNAtS1sZT";
        for &t in backend {
            assert_ne!(message_name(ToClient, t), "Unknown", "{}", t as char);
        }
        assert_eq!(message_name(ToBackend, b'P'), "Parse");
        assert_eq!(message_name(ToClient, b'T'), "RowDescription");
        assert_eq!(message_name(ToClient, b'P'), "Unknown");
        assert_eq!(message_name(ToBackend, b'Z'), "Unknown");
    }

    #[test]
    fn describe_query() {
        let mut f = Vec::new();
        frontend::query(&mut f, "SELECT 1;\nSELECT \"a\"\t\\ '\u{1}'");
        assert_eq!(
            desc(ToBackend, &f),
            r#"Query "SELECT 1;\nSELECT \"a\"\t\\ '\u{1}'""#
        );
        let mut f = Vec::new();
        frontend::query(&mut f, "SELECT 'é'");
        assert_eq!(desc(ToBackend, &f), "Query \"SELECT 'é'\"");
    }

    #[test]
    fn describe_long_query_is_capped() {
        let sql = format!("SELECT '{}'", "x".repeat(5000));
        let mut f = Vec::new();
        frontend::query(&mut f, &sql);
        let line = desc(ToBackend, &f);
        assert!(line.len() < QUERY_TEXT_CAP + 100, "{}", line.len());
        assert!(line.ends_with(&format!("\" ({} bytes cut)", sql.len() - QUERY_TEXT_CAP)));
    }

    #[test]
    fn describe_truncated_query() {
        let sql = format!("SELECT '{}'", "y".repeat(3000));
        let mut f = Vec::new();
        frontend::query(&mut f, &sql);
        let line = desc_prefix(ToBackend, &f, 100);
        assert!(line.starts_with("Query \"SELECT 'yyy"), "{line}");
        assert!(line.ends_with(&format!(" ({} bytes cut) (truncated)", sql.len() - 100)));
        let quoted = line.split('"').nth(1).unwrap();
        assert_eq!(quoted.matches('y').count(), 100 - 8);
        assert_eq!(desc_prefix(ToBackend, &f, 0), "Query (truncated)");
    }

    #[test]
    fn describe_query_with_invalid_utf8_and_cut_char() {
        let f = tagged(b'Q', b"a\xffb\xc3\0");
        assert_eq!(desc(ToBackend, &f), r#"Query "a\xffb\xc3""#);
        // A prefix ending inside a multibyte character.
        let mut f = Vec::new();
        frontend::query(&mut f, "éé");
        let line = desc_prefix(ToBackend, &f, 3);
        assert_eq!(line, r#"Query "é\xc3" (1 bytes cut) (truncated)"#);
    }

    #[test]
    fn describe_parse() {
        let f = tagged(b'P', &parse_body("s1", "SELECT $1, $2", &[23, 25]));
        assert_eq!(
            desc(ToBackend, &f),
            r#"Parse statement="s1" query="SELECT $1, $2" param_types=[23,25]"#
        );
        let f = tagged(b'P', &parse_body("", "SELECT 1", &[]));
        assert_eq!(
            desc(ToBackend, &f),
            r#"Parse statement="" query="SELECT 1" param_types=[]"#
        );
        let types: Vec<u32> = (1..=20).collect();
        let f = tagged(b'P', &parse_body("", "x", &types));
        assert!(desc(ToBackend, &f)
            .ends_with("param_types=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,…+4]"));
    }

    #[test]
    fn describe_parse_prefixes() {
        let f = tagged(b'P', &parse_body("s1", "SELECT $1", &[23, 25]));
        let body_len = f.len() - 5;
        assert_eq!(desc_prefix(ToBackend, &f, 0), "Parse (truncated)");
        assert_eq!(
            desc_prefix(ToBackend, &f, 2),
            r#"Parse statement="s1" (truncated)"#
        );
        assert_eq!(
            desc_prefix(ToBackend, &f, 7),
            r#"Parse statement="s1" query="SELE" (truncated)"#
        );
        assert_eq!(
            desc_prefix(ToBackend, &f, body_len - 2),
            r#"Parse statement="s1" query="SELECT $1" param_types=[23] (truncated)"#
        );
        for n in 0..body_len {
            let line = desc_prefix(ToBackend, &f, n);
            assert!(line.starts_with("Parse"), "{line}");
            assert!(line.ends_with("(truncated)"), "{n}: {line}");
        }
    }

    #[test]
    fn describe_malformed() {
        // Complete body, but the query has no terminator.
        let f = tagged(b'P', b"s1\0SELECT");
        assert_eq!(
            desc(ToBackend, &f),
            "Parse (malformed: string without NUL terminator)"
        );
        let f = tagged(b'S', b"x");
        assert_eq!(
            desc(ToBackend, &f),
            "Sync (malformed: 1 unexpected bytes at end of message)"
        );
        let f = tagged(b'Z', b"Q");
        assert_eq!(
            desc(ToClient, &f),
            "ReadyForQuery (malformed: invalid transaction status)"
        );
        let f = tagged(b'R', b"\0\0");
        assert_eq!(
            desc(ToClient, &f),
            "Authentication (malformed: unexpected end of message)"
        );
        let f = tagged(b'D', b"\xff\xff");
        assert_eq!(desc(ToClient, &f), "DataRow (malformed: negative count)");
    }

    #[test]
    fn describe_bind() {
        let f = tagged(
            b'B',
            &bind_body("", "s1", &[1], &[Some(b"\0\0\0\x05"), None], &[0, 1]),
        );
        assert_eq!(
            desc(ToBackend, &f),
            r#"Bind portal="" statement="s1" param_formats=[1] params=2 (4 bytes, 1 null) result_formats=[0,1]"#
        );
        let line = desc_prefix(ToBackend, &f, 14);
        assert_eq!(
            line,
            r#"Bind portal="" statement="s1" param_formats=[1] params=2 (4 bytes) (truncated)"#
        );
    }

    #[test]
    fn describe_bind_never_shows_values() {
        let f = tagged(b'B', &bind_body("", "", &[], &[Some(b"topsecret")], &[]));
        assert!(!desc(ToBackend, &f).contains("topsecret"));
    }

    #[test]
    fn describe_close_describe_execute() {
        assert_eq!(desc(ToBackend, &tagged(b'C', b"Ss1\0")), r#"Close S "s1""#);
        assert_eq!(desc(ToBackend, &tagged(b'D', b"P\0")), r#"Describe P """#);
        assert_eq!(
            desc(ToBackend, &tagged(b'D', b"Xa\0")),
            "Describe (malformed: kind is neither 'S' nor 'P')"
        );
        let mut body = b"\0".to_vec();
        put_i32(&mut body, 0);
        assert_eq!(
            desc(ToBackend, &tagged(b'E', &body)),
            r#"Execute portal="" max_rows=0"#
        );
    }

    #[test]
    fn describe_copy_and_empty_frontend_messages() {
        assert_eq!(
            desc(ToBackend, &tagged(b'd', b"1\t2\n")),
            "CopyData (4 bytes)"
        );
        // A streamed CopyData reports its full size.
        let f = tagged(b'd', &[7u8; 1000]);
        assert_eq!(desc_prefix(ToBackend, &f, 10), "CopyData (1000 bytes)");
        assert_eq!(desc(ToBackend, &tagged(b'c', b"")), "CopyDone");
        assert_eq!(
            desc(ToBackend, &tagged(b'f', b"aborted\0")),
            r#"CopyFail "aborted""#
        );
        assert_eq!(desc(ToBackend, &tagged(b'H', b"")), "Flush");
        assert_eq!(desc(ToBackend, &tagged(b'S', b"")), "Sync");
        assert_eq!(desc(ToBackend, &tagged(b'X', b"")), "Terminate");
        assert_eq!(
            desc(ToBackend, &tagged(b'z', b"abc")),
            "Unknown 'z' (3 bytes)"
        );
        assert_eq!(desc(ToBackend, &tagged(0, b"")), "Unknown 0x00 (0 bytes)");
    }

    #[test]
    fn describe_function_call() {
        let mut body = Vec::new();
        put_u32(&mut body, 1598);
        put_i16(&mut body, 1);
        put_i16(&mut body, 1);
        put_i16(&mut body, 2);
        put_i32(&mut body, 4);
        body.extend_from_slice(&[0, 0, 0, 9]);
        put_i32(&mut body, -1);
        put_i16(&mut body, 1);
        assert_eq!(
            desc(ToBackend, &tagged(b'F', &body)),
            "FunctionCall oid=1598 arg_formats=[1] args=2 (4 bytes, 1 null) result_format=1"
        );
    }

    #[test]
    fn describe_password_never_leaks() {
        let mut f = Vec::new();
        frontend::password_message(&mut f, b"secretpw");
        let line = desc(ToBackend, &f);
        assert_eq!(line, "PasswordMessage/SASL (9 bytes, masked)");
        for n in 0..=f.len() - 5 {
            assert!(!desc_prefix(ToBackend, &f, n).contains("secret"));
        }
        // Malformed variants of a password message still show nothing.
        for body in [
            &b"secretpw"[..],
            b"secretpw\0\0\0\0\0",
            b"secretpw\0\xff\xff\xff\xff",
        ] {
            assert!(!desc(ToBackend, &tagged(b'p', body)).contains("secretpw"));
        }

        let mut f = Vec::new();
        frontend::sasl_initial_response(&mut f, "SCRAM-SHA-256", b"n,,n=,r=secretpw");
        let line = desc(ToBackend, &f);
        assert!(!line.contains("secretpw"), "{line}");
        assert!(line.ends_with("mechanism=SCRAM-SHA-256"), "{line}");

        let mut f = Vec::new();
        frontend::sasl_response(&mut f, b"c=biws,r=x,p=secretpw");
        assert_eq!(
            desc(ToBackend, &f),
            "PasswordMessage/SASL (21 bytes, masked)"
        );
    }

    #[test]
    fn describe_authentication() {
        let mut f = Vec::new();
        backend::authentication_ok(&mut f);
        assert_eq!(desc(ToClient, &f), "AuthenticationOk");
        f.clear();
        backend::authentication_cleartext_password(&mut f);
        assert_eq!(desc(ToClient, &f), "AuthenticationCleartextPassword");
        f.clear();
        backend::authentication_md5_password(&mut f, [9, 9, 9, 9]);
        assert_eq!(desc(ToClient, &f), "AuthenticationMD5Password");
        f.clear();
        backend::authentication_sasl(&mut f, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            desc(ToClient, &f),
            "AuthenticationSASL mechanisms=[SCRAM-SHA-256-PLUS,SCRAM-SHA-256]"
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 10),
            "AuthenticationSASL mechanisms=[] (truncated)"
        );
        f.clear();
        backend::authentication_sasl_continue(&mut f, b"r=nonce,s=salt,i=4096");
        assert_eq!(
            desc(ToClient, &f),
            "AuthenticationSASLContinue (21 bytes, masked)"
        );
        f.clear();
        backend::authentication_sasl_final(&mut f, b"v=signature");
        let line = desc(ToClient, &f);
        assert_eq!(line, "AuthenticationSASLFinal (11 bytes, masked)");
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x02")),
            "AuthenticationKerberosV5"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x06")),
            "AuthenticationSCMCredential"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x07")),
            "AuthenticationGSS"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x08tok")),
            "AuthenticationGSSContinue (3 bytes, masked)"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x09")),
            "AuthenticationSSPI"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'R', b"\0\0\0\x63ab")),
            "Authentication subtype=99 (2 bytes)"
        );
    }

    #[test]
    fn describe_backend_key_data_masks_secret() {
        let mut f = Vec::new();
        backend::backend_key_data(&mut f, 4321, 0x1234_5678);
        let line = desc(ToClient, &f);
        assert_eq!(line, "BackendKeyData pid=4321 secret=masked");
        assert!(!line.contains(&0x1234_5678u32.to_string()));
    }

    #[test]
    fn describe_empty_backend_messages() {
        for (tag, name) in [
            (b'2', "BindComplete"),
            (b'3', "CloseComplete"),
            (b'c', "CopyDone"),
            (b'I', "EmptyQueryResponse"),
            (b'n', "NoData"),
            (b'1', "ParseComplete"),
            (b's', "PortalSuspended"),
        ] {
            assert_eq!(desc(ToClient, &tagged(tag, b"")), name);
        }
    }

    #[test]
    fn describe_command_complete_and_ready_for_query() {
        let mut f = Vec::new();
        backend::command_complete(&mut f, "INSERT 0 5");
        assert_eq!(desc(ToClient, &f), r#"CommandComplete "INSERT 0 5""#);
        for (status, text) in [
            (b'I', "ReadyForQuery I (idle)"),
            (b'T', "ReadyForQuery T (in transaction)"),
            (b'E', "ReadyForQuery E (failed transaction)"),
        ] {
            let mut f = Vec::new();
            backend::ready_for_query(&mut f, status);
            assert_eq!(desc(ToClient, &f), text);
        }
    }

    #[test]
    fn describe_copy_responses() {
        let mut body = vec![0u8];
        put_i16(&mut body, 3);
        for _ in 0..3 {
            put_i16(&mut body, 0);
        }
        assert_eq!(
            desc(ToClient, &tagged(b'G', &body)),
            "CopyInResponse format=text columns=3 formats=[0,0,0]"
        );
        body[0] = 1;
        assert_eq!(
            desc(ToClient, &tagged(b'H', &body)),
            "CopyOutResponse format=binary columns=3 formats=[0,0,0]"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'W', &body)),
            "CopyBothResponse format=binary columns=3 formats=[0,0,0]"
        );
        assert_eq!(
            desc_prefix(ToClient, &tagged(b'W', &body), 5),
            "CopyBothResponse format=binary columns=3 formats=[0] (truncated)"
        );
        assert_eq!(desc(ToClient, &tagged(b'd', b"abc")), "CopyData (3 bytes)");
    }

    #[test]
    fn describe_rows() {
        let mut f = Vec::new();
        backend::row_description(&mut f, &["id", "name\n"]);
        assert_eq!(
            desc(ToClient, &f),
            r#"RowDescription columns=2 [id,name\n]"#
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 4),
            "RowDescription columns=2 [id] (truncated)"
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 23),
            "RowDescription columns=2 [id] (truncated)"
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 26),
            "RowDescription columns=2 [id,nam] (truncated)"
        );
        f.clear();
        backend::data_row(&mut f, &[Some("1"), None, Some("hello")]);
        assert_eq!(desc(ToClient, &f), "DataRow columns=3 (6 bytes, 1 null)");
        assert_eq!(
            desc_prefix(ToClient, &f, 8),
            "DataRow columns=3 (1 bytes) (truncated)"
        );
    }

    #[test]
    fn describe_error_and_notice() {
        let mut f = Vec::new();
        backend::error_response(
            &mut f,
            "ERROR",
            "42P01",
            "relation \"t\" does not exist",
            Some("d"),
            None,
        );
        assert_eq!(
            desc(ToClient, &f),
            r#"ErrorResponse ERROR 42P01 "relation \"t\" does not exist""#
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 30),
            r#"ErrorResponse ERROR 42P01 "relation" (truncated)"#
        );
        f.clear();
        backend::notice_response(&mut f, "WARNING", "01000", "careful");
        assert_eq!(
            desc(ToClient, &f),
            r#"NoticeResponse WARNING 01000 "careful""#
        );
        // Localized severity only.
        let f = tagged(b'E', b"SFEHLER\0C42601\0Mx\0\0");
        assert_eq!(desc(ToClient, &f), r#"ErrorResponse FEHLER 42601 "x""#);
        let f = tagged(b'E', b"SFEHLER\0C42601\0Mx\0");
        assert_eq!(
            desc(ToClient, &f),
            "ErrorResponse (malformed: unexpected end of message)"
        );
    }

    #[test]
    fn describe_parameter_status_and_description() {
        let mut f = Vec::new();
        backend::parameter_status(&mut f, "application_name", "psql\nx");
        assert_eq!(
            desc(ToClient, &f),
            r"ParameterStatus application_name=psql\nx"
        );
        assert_eq!(
            desc_prefix(ToClient, &f, 20),
            "ParameterStatus application_name=psq (truncated)"
        );
        let mut body = Vec::new();
        put_i16(&mut body, 2);
        put_u32(&mut body, 23);
        put_u32(&mut body, 25);
        assert_eq!(
            desc(ToClient, &tagged(b't', &body)),
            "ParameterDescription params=2 types=[23,25]"
        );
    }

    #[test]
    fn describe_notification_function_result_negotiate() {
        let mut body = Vec::new();
        put_u32(&mut body, 99);
        body.extend_from_slice(b"jobs\0payload!\0");
        assert_eq!(
            desc(ToClient, &tagged(b'A', &body)),
            r#"NotificationResponse pid=99 channel="jobs" payload=(8 bytes)"#
        );
        let mut body = Vec::new();
        put_i32(&mut body, 3);
        body.extend_from_slice(b"abc");
        assert_eq!(
            desc(ToClient, &tagged(b'V', &body)),
            "FunctionCallResponse (3 bytes)"
        );
        assert_eq!(
            desc(ToClient, &tagged(b'V', b"\xff\xff\xff\xff")),
            "FunctionCallResponse NULL"
        );
        let mut body = Vec::new();
        put_i32(&mut body, 0);
        put_i32(&mut body, 1);
        body.extend_from_slice(b"_pq_.compression\0");
        assert_eq!(
            desc(ToClient, &tagged(b'v', &body)),
            "NegotiateProtocolVersion newest_minor=0 unrecognized=[_pq_.compression]"
        );
    }

    #[test]
    fn describe_startup_packets() {
        let mut s = String::new();
        let mut p = Vec::new();
        frontend::ssl_request(&mut p);
        describe_startup(&parse_startup(&p).unwrap(), &mut s);
        assert_eq!(s, "SSLRequest");
        s.clear();
        describe_startup(&StartupPacket::GssEncRequest, &mut s);
        assert_eq!(s, "GSSENCRequest");
        s.clear();
        p.clear();
        frontend::cancel_request(&mut p, 55, 987_654_321);
        describe_startup(&parse_startup(&p).unwrap(), &mut s);
        assert_eq!(s, "CancelRequest pid=55 secret=masked");
        s.clear();
        p.clear();
        frontend::startup_message(
            &mut p,
            &[
                ("user", "alice"),
                ("database", "shop"),
                ("application_name", "a b"),
            ],
        );
        describe_startup(&parse_startup(&p).unwrap(), &mut s);
        assert_eq!(
            s,
            "StartupMessage 3.0 user=alice database=shop application_name=a b"
        );
    }

    #[test]
    fn describe_appends_to_existing_line() {
        let mut s = String::from("C-1 > ");
        describe(ToBackend, b'S', b"", 5, &mut s);
        assert_eq!(s, "C-1 > Sync");
        let mut s = String::from("C-1 > ");
        describe(ToBackend, b'S', b"xx", 7, &mut s);
        assert_eq!(
            s,
            "C-1 > Sync (malformed: 2 unexpected bytes at end of message)"
        );
    }

    #[test]
    fn describe_one_line_always() {
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            let body = rng.bytes(64);
            for tag in [b'Q', b'P', b'E', b'N', b'S', b'T', b'C', b'f', b'v'] {
                for dir in [ToBackend, ToClient] {
                    let mut s = String::new();
                    describe(dir, tag, &body, body.len() + 5, &mut s);
                    assert!(!s.contains('\n') && !s.contains('\r'), "{s}");
                }
            }
        }
    }

    /// Valid frames of every message type, for the never-panic loop.
    fn sample_frames() -> Vec<(Direction, Vec<u8>)> {
        let mut v = Vec::new();
        let mut f = Vec::new();
        let mut add = |dir, f: &mut Vec<u8>| v.push((dir, std::mem::take(f)));
        frontend::query(&mut f, "SELECT 1");
        add(ToBackend, &mut f);
        frontend::password_message(&mut f, b"secretpw");
        add(ToBackend, &mut f);
        frontend::sasl_initial_response(&mut f, "SCRAM-SHA-256", b"n,,n=,r=x");
        add(ToBackend, &mut f);
        f = tagged(b'P', &parse_body("s", "SELECT $1", &[23]));
        add(ToBackend, &mut f);
        f = tagged(b'B', &bind_body("p", "s", &[1], &[Some(b"ab"), None], &[0]));
        add(ToBackend, &mut f);
        f = tagged(b'E', b"p\0\0\0\0\x05");
        add(ToBackend, &mut f);
        f = tagged(b'D', b"Ss\0");
        add(ToBackend, &mut f);
        f = tagged(b'F', b"\0\0\0\x01\0\x01\0\x01\0\x01\0\0\0\x01a\0\x01");
        add(ToBackend, &mut f);
        backend::error_response(&mut f, "ERROR", "XX000", "m", Some("d"), Some("h"));
        add(ToClient, &mut f);
        backend::authentication_sasl(&mut f, &["SCRAM-SHA-256"]);
        add(ToClient, &mut f);
        backend::row_description(&mut f, &["a", "b"]);
        add(ToClient, &mut f);
        backend::data_row(&mut f, &[Some("x"), None]);
        add(ToClient, &mut f);
        backend::parameter_status(&mut f, "a", "b");
        add(ToClient, &mut f);
        f = tagged(b'A', b"\0\0\0\x01c\0p\0");
        add(ToClient, &mut f);
        f = tagged(b'v', b"\0\0\0\0\0\0\0\x01o\0");
        add(ToClient, &mut f);
        f = tagged(b'G', b"\0\0\x01\0\0");
        add(ToClient, &mut f);
        v
    }

    #[test]
    fn random_and_truncated_bytes_never_panic() {
        let mut rng = Rng::new(42);
        let samples = sample_frames();
        let mut line = String::new();
        for i in 0..30_000 {
            let body = if i % 2 == 0 {
                rng.bytes(48)
            } else {
                let (_, frame) = &samples[i % samples.len()];
                rng.mutate(&frame[5..])
            };
            let tag = match rng.below(3) {
                0 => rng.next() as u8,
                _ => b"BCdcfDEHFPpQSXRK23GWIVvnNAt1sZT"[rng.below(31)],
            };
            // Claimed total length: exact, longer (a prefix), shorter or nonsense.
            let total = match rng.below(4) {
                0 => body.len() + 5,
                1 => body.len() + 5 + rng.below(100),
                2 => rng.below(body.len() + 6),
                _ => usize::MAX - rng.below(3),
            };
            for dir in [ToBackend, ToClient] {
                line.clear();
                describe(dir, tag, &body, total, &mut line);
                assert!(line.starts_with(|c: char| c.is_ascii_uppercase()), "{line}");
                assert!(!line.contains('\n'));
            }
        }
        // Every prefix of every valid frame.
        for (dir, frame) in &samples {
            for n in 0..=frame.len() - 5 {
                line.clear();
                describe(*dir, frame[0], &frame[5..5 + n], frame.len(), &mut line);
                assert!(!line.contains("malformed"), "{n}: {line}");
                assert!(!line.contains("secretpw"));
            }
        }
    }

    #[test]
    fn push_escaped_respects_cap() {
        let mut s = String::new();
        assert_eq!(push_escaped(&mut s, "aéb".as_bytes(), 2), 1);
        assert_eq!(s, "a");
        s.clear();
        assert_eq!(push_escaped(&mut s, b"\x7f\xe2\x80\xa8", 10), 4);
        assert_eq!(s, r"\u{7f}\u{2028}");
    }
}
