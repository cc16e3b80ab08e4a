//! Messages a frontend (client) sends: builders for pgmulti acting as a client to a node, and
//! parsers for pgmulti acting as the server its clients talk to.
//!
//! Builders append one whole frame to the caller's `Vec<u8>`; parsers take the body after the
//! 5-byte header and borrow from it. No allocation, no panic on malformed input.

use super::framing::{
    begin_message, begin_untagged, finish_message, put_cstr, put_i16, put_i32, put_u32,
    DecodeError, Reader,
};
use super::{ProtocolError, CANCEL_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE};

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let start = begin_untagged(out);
    put_u32(out, PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(out, name.as_bytes());
        put_cstr(out, value.as_bytes());
    }
    out.push(0);
    finish_message(out, start);
}

pub fn ssl_request(out: &mut Vec<u8>) {
    let start = begin_untagged(out);
    put_u32(out, SSL_REQUEST_CODE);
    finish_message(out, start);
}

pub fn cancel_request(out: &mut Vec<u8>, process_id: u32, secret_key: u32) {
    let start = begin_untagged(out);
    put_u32(out, CANCEL_REQUEST_CODE);
    put_u32(out, process_id);
    put_u32(out, secret_key);
    finish_message(out, start);
}

/// PasswordMessage ('p'): the password (cleartext or `md5…`) followed by a NUL.
pub fn password_message(out: &mut Vec<u8>, password: &[u8]) {
    let start = begin_message(out, b'p');
    put_cstr(out, password);
    finish_message(out, start);
}

/// SASLInitialResponse ('p'): mechanism name, then the length-prefixed client-first-message.
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    let start = begin_message(out, b'p');
    put_cstr(out, mechanism.as_bytes());
    put_i32(out, data.len() as i32);
    out.extend_from_slice(data);
    finish_message(out, start);
}

/// SASLResponse ('p'): the raw SASL data.
pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    let start = begin_message(out, b'p');
    out.extend_from_slice(data);
    finish_message(out, start);
}

/// Query ('Q'): a simple-protocol query string.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    let start = begin_message(out, b'Q');
    put_cstr(out, sql.as_bytes());
    finish_message(out, start);
}

/// Terminate ('X').
pub fn terminate(out: &mut Vec<u8>) {
    let start = begin_message(out, b'X');
    finish_message(out, start);
}

/// Sync ('S').
pub fn sync(out: &mut Vec<u8>) {
    let start = begin_message(out, b'S');
    finish_message(out, start);
}

/// Flush ('H').
pub fn flush(out: &mut Vec<u8>) {
    let start = begin_message(out, b'H');
    finish_message(out, start);
}

/// CopyFail ('f'): end a COPY FROM STDIN with an error.
pub fn copy_fail(out: &mut Vec<u8>, reason: &str) {
    let start = begin_message(out, b'f');
    put_cstr(out, reason.as_bytes());
    finish_message(out, start);
}

/// Parse ('P'): prepare `sql` as `statement`, with these parameter type OIDs (0: inferred).
pub fn parse_message(out: &mut Vec<u8>, statement: &str, sql: &str, param_types: &[u32]) {
    let start = begin_message(out, b'P');
    put_cstr(out, statement.as_bytes());
    put_cstr(out, sql.as_bytes());
    put_i16(out, param_types.len() as i16);
    for &oid in param_types {
        put_i32(out, oid as i32);
    }
    finish_message(out, start);
}

/// Bind ('B'): `portal` from `statement` with these parameter formats and values (None:
/// NULL), results in these formats.
pub fn bind_message(
    out: &mut Vec<u8>,
    portal: &str,
    statement: &str,
    formats: &[i16],
    values: &[Option<&[u8]>],
    result_formats: &[i16],
) {
    let start = begin_message(out, b'B');
    put_cstr(out, portal.as_bytes());
    put_cstr(out, statement.as_bytes());
    put_values(out, formats, values);
    put_i16(out, result_formats.len() as i16);
    for &f in result_formats {
        put_i16(out, f);
    }
    finish_message(out, start);
}

/// Format codes, then values, as Bind and FunctionCall carry them.
fn put_values(out: &mut Vec<u8>, formats: &[i16], values: &[Option<&[u8]>]) {
    put_i16(out, formats.len() as i16);
    for &f in formats {
        put_i16(out, f);
    }
    put_i16(out, values.len() as i16);
    for v in values {
        match *v {
            Some(bytes) => {
                put_i32(out, bytes.len() as i32);
                out.extend_from_slice(bytes);
            }
            None => put_i32(out, -1),
        }
    }
}

/// FunctionCall ('F'): call function `oid` with `args`, the result in `result_format`.
pub fn function_call_message(
    out: &mut Vec<u8>,
    oid: u32,
    formats: &[i16],
    args: &[Option<&[u8]>],
    result_format: i16,
) {
    let start = begin_message(out, b'F');
    put_u32(out, oid);
    put_values(out, formats, args);
    put_i16(out, result_format);
    finish_message(out, start);
}

/// Execute ('E'): run `portal`, at most `max_rows` rows (0: all).
pub fn execute_message(out: &mut Vec<u8>, portal: &str, max_rows: i32) {
    let start = begin_message(out, b'E');
    put_cstr(out, portal.as_bytes());
    put_i32(out, max_rows);
    finish_message(out, start);
}

/// Close ('C') of a statement (`kind` b'S') or portal (b'P').
pub fn close_message(out: &mut Vec<u8>, kind: u8, name: &str) {
    let start = begin_message(out, b'C');
    out.push(kind);
    put_cstr(out, name.as_bytes());
    finish_message(out, start);
}

/// The password of a PasswordMessage body, without its NUL. The NUL must be the last byte
/// and the only one.
pub fn parse_password_message(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Ok(password),
        _ => Err(ProtocolError("invalid password packet size".to_string())),
    }
}

/// `(mechanism, data)` of a SASLInitialResponse body; a data length of -1 gives empty data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let mut r = Reader::new(body);
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = match len {
        -1 => &[][..],
        n if n >= 0 => r.bytes(n as usize)?,
        _ => return Err(DecodeError::Invalid("invalid SASL response length").into()),
    };
    r.finish()?;
    Ok((mechanism, data))
}

/// The data of a SASLResponse body (the whole body).
pub fn parse_sasl_response(body: &[u8]) -> &[u8] {
    body
}

/// The query string of a Query body.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let sql = r.cstr()?;
    r.finish()?;
    Ok(sql)
}

/// A decoded Parse message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; "" is the unnamed statement.
    pub statement: &'a str,
    pub query: &'a str,
    /// Parameter type OIDs (0 = unspecified).
    pub param_types: Oids<'a>,
}

pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let statement = r.cstr()?;
    let query = r.cstr()?;
    let param_types = Oids::read(&mut r)?;
    r.finish()?;
    Ok(Parse {
        statement,
        query,
        param_types,
    })
}

/// A decoded Bind message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal; "" is the unnamed portal.
    pub portal: &'a str,
    /// Source prepared statement; "" is the unnamed statement.
    pub statement: &'a str,
    pub param_formats: FormatCodes<'a>,
    pub params: BindParams<'a>,
    pub result_formats: FormatCodes<'a>,
}

pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let param_formats = FormatCodes::read(&mut r)?;
    let params = BindParams::read(&mut r)?;
    let result_formats = FormatCodes::read(&mut r)?;
    r.finish()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// `(portal, max_rows)` of an Execute body; max_rows 0 means "no limit".
pub fn parse_execute(body: &[u8]) -> Result<(&str, i32), ProtocolError> {
    let mut r = Reader::new(body);
    let portal = r.cstr()?;
    let max_rows = r.i32()?;
    r.finish()?;
    Ok((portal, max_rows))
}

/// A FunctionCall body (the fast-path interface libpq's and JDBC's large-object calls use).
pub struct FunctionCall<'a> {
    pub oid: u32,
    pub arg_formats: FormatCodes<'a>,
    pub args: BindParams<'a>,
    pub result_format: i16,
}

pub fn parse_function_call(body: &[u8]) -> Result<FunctionCall<'_>, ProtocolError> {
    let mut r = Reader::new(body);
    let oid = r.u32()?;
    let arg_formats = FormatCodes::read(&mut r)?;
    let args = BindParams::read(&mut r)?;
    let result_format = r.i16()?;
    r.finish()?;
    Ok(FunctionCall {
        oid,
        arg_formats,
        args,
        result_format,
    })
}

/// `(kind, name)` of a Describe or Close body; kind is `b'S'` (statement) or `b'P'` (portal).
pub fn parse_describe_or_close(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError(format!(
            "invalid DESCRIBE/CLOSE message subtype {kind}"
        )));
    }
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// A list of Int32 OIDs preceded by its Int16 count, validated at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oids<'a> {
    bytes: &'a [u8],
}

impl<'a> Oids<'a> {
    /// Read an Int16 count and that many Int32 OIDs.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = r.count16()?;
        Ok(Oids {
            bytes: r.bytes(n * 4)?,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.bytes
            .chunks_exact(4)
            .map(|c| c.try_into().map(u32::from_be_bytes).unwrap_or(0))
    }
}

/// A list of Int16 format codes (0 text, 1 binary) preceded by its Int16 count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatCodes<'a> {
    bytes: &'a [u8],
}

impl<'a> FormatCodes<'a> {
    /// Read an Int16 count and that many Int16 codes.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let n = r.count16()?;
        Ok(FormatCodes {
            bytes: r.bytes(n * 2)?,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = i16> + 'a {
        self.bytes
            .chunks_exact(2)
            .map(|c| c.try_into().map(i16::from_be_bytes).unwrap_or(0))
    }
}

/// The parameter values of a Bind (`None` = SQL NULL), validated at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindParams<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> BindParams<'a> {
    /// Read an Int16 count and that many length-prefixed values.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let start = r.rest();
        let count = r.count16()?;
        for _ in 0..count {
            let len = r.i32()?;
            if len >= 0 {
                r.bytes(len as usize)?;
            } else if len != -1 {
                return Err(DecodeError::Invalid("invalid parameter length"));
            }
        }
        let used = start.len() - r.remaining();
        let bytes = start.get(2..used).unwrap_or_default();
        Ok(BindParams { count, bytes })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> BindParamsIter<'a> {
        BindParamsIter {
            r: Reader::new(self.bytes),
        }
    }
}

/// Iterator over Bind parameter values.
#[derive(Debug, Clone)]
pub struct BindParamsIter<'a> {
    r: Reader<'a>,
}

impl<'a> Iterator for BindParamsIter<'a> {
    type Item = Option<&'a [u8]>;
    fn next(&mut self) -> Option<Self::Item> {
        let len = self.r.i32().ok()?;
        if len < 0 {
            return Some(None);
        }
        self.r.bytes(len as usize).ok().map(Some)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::framing::{message_header, put_i16};
    use super::super::MAX_MESSAGE_LEN;
    use super::*;

    /// Split one built frame into (tag, body), checking the length field.
    fn frame(buf: &[u8]) -> (u8, &[u8]) {
        let (tag, total) = message_header(buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(total, buf.len());
        (tag, &buf[5..])
    }

    #[test]
    fn startup_message_layout() {
        let mut out = b"junk".to_vec();
        startup_message(&mut out, &[("user", "bob")]);
        let packet = &out[4..];
        assert_eq!(packet.len(), 4 + 4 + 9 + 1);
        assert_eq!(&packet[..4], &(packet.len() as u32).to_be_bytes());
        assert_eq!(&packet[4..8], &PROTOCOL_3_0.to_be_bytes());
        assert_eq!(&packet[8..], b"user\0bob\0\0");
    }

    #[test]
    fn ssl_and_cancel_request_layout() {
        let mut out = Vec::new();
        ssl_request(&mut out);
        assert_eq!(out, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        out.clear();
        cancel_request(&mut out, 1, 2);
        assert_eq!(
            out,
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2]
        );
    }

    #[test]
    fn empty_messages() {
        let mut out = Vec::new();
        terminate(&mut out);
        sync(&mut out);
        flush(&mut out);
        assert_eq!(out, b"X\0\0\0\x04S\0\0\0\x04H\0\0\0\x04");
    }

    #[test]
    fn query_round_trip() {
        let mut out = Vec::new();
        query(&mut out, "SELECT 'é'");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'Q');
        assert_eq!(parse_query(body), Ok("SELECT 'é'"));
        assert!(parse_query(b"SELECT 1").is_err());
        assert!(parse_query(b"SELECT 1\0x").is_err());
    }

    #[test]
    fn password_message_round_trip() {
        let mut out = Vec::new();
        password_message(&mut out, b"md5abc");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'p');
        assert_eq!(body, b"md5abc\0");
        assert_eq!(parse_password_message(body), Ok(&b"md5abc"[..]));
        assert_eq!(parse_password_message(b"\0"), Ok(&b""[..]));
        assert!(parse_password_message(b"").is_err());
        assert!(parse_password_message(b"abc").is_err());
        assert!(parse_password_message(b"a\0bc\0").is_err());
    }

    #[test]
    fn sasl_initial_response_round_trip() {
        let mut out = Vec::new();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'p');
        assert_eq!(
            parse_sasl_initial_response(body),
            Ok(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]))
        );
        // Length -1: no data.
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        put_i32(&mut body, -1);
        assert_eq!(
            parse_sasl_initial_response(&body),
            Ok(("SCRAM-SHA-256", &b""[..]))
        );
        // Length beyond the body, negative, trailing bytes, missing mechanism terminator.
        let mut bad = b"M\0".to_vec();
        put_i32(&mut bad, 10);
        bad.extend_from_slice(b"abc");
        assert!(parse_sasl_initial_response(&bad).is_err());
        let mut bad = b"M\0".to_vec();
        put_i32(&mut bad, -2);
        assert!(parse_sasl_initial_response(&bad).is_err());
        let mut bad = b"M\0".to_vec();
        put_i32(&mut bad, 1);
        bad.extend_from_slice(b"ab");
        assert!(parse_sasl_initial_response(&bad).is_err());
        assert!(parse_sasl_initial_response(b"SCRAM").is_err());
    }

    #[test]
    fn sasl_response_is_raw_data() {
        let mut out = Vec::new();
        sasl_response(&mut out, b"c=biws,r=x,p=y");
        let (tag, body) = frame(&out);
        assert_eq!(tag, b'p');
        assert_eq!(parse_sasl_response(body), b"c=biws,r=x,p=y");
    }

    pub(crate) fn parse_body(statement: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        put_cstr(&mut b, statement.as_bytes());
        put_cstr(&mut b, sql.as_bytes());
        put_i16(&mut b, types.len() as i16);
        for t in types {
            put_u32(&mut b, *t);
        }
        b
    }

    pub(crate) fn bind_body(
        portal: &str,
        statement: &str,
        formats: &[i16],
        params: &[Option<&[u8]>],
        result_formats: &[i16],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        put_cstr(&mut b, portal.as_bytes());
        put_cstr(&mut b, statement.as_bytes());
        put_i16(&mut b, formats.len() as i16);
        for f in formats {
            put_i16(&mut b, *f);
        }
        put_i16(&mut b, params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    put_i32(&mut b, v.len() as i32);
                    b.extend_from_slice(v);
                }
                None => put_i32(&mut b, -1),
            }
        }
        put_i16(&mut b, result_formats.len() as i16);
        for f in result_formats {
            put_i16(&mut b, *f);
        }
        b
    }

    #[test]
    fn parse_parse_message() {
        let body = parse_body("s1", "SELECT $1, $2", &[23, 0]);
        let p = parse_parse(&body).unwrap();
        assert_eq!(p.statement, "s1");
        assert_eq!(p.query, "SELECT $1, $2");
        assert_eq!(p.param_types.len(), 2);
        assert_eq!(p.param_types.iter().collect::<Vec<_>>(), [23, 0]);
        assert!(parse_parse(&body[..body.len() - 1]).is_err());
        let mut neg = parse_body("", "x", &[]);
        let at = neg.len() - 2;
        neg[at..].copy_from_slice(&(-1i16).to_be_bytes());
        assert!(parse_parse(&neg).is_err());
    }

    #[test]
    fn parse_bind_message() {
        let body = bind_body("", "s1", &[1], &[Some(b"\0\0\0\x05"), None], &[0, 1]);
        let b = parse_bind(&body).unwrap();
        assert_eq!((b.portal, b.statement), ("", "s1"));
        assert_eq!(b.param_formats.iter().collect::<Vec<_>>(), [1]);
        assert_eq!(b.params.len(), 2);
        assert_eq!(
            b.params.iter().collect::<Vec<_>>(),
            [Some(&b"\0\0\0\x05"[..]), None]
        );
        assert_eq!(b.result_formats.iter().collect::<Vec<_>>(), [0, 1]);
        for cut in 0..body.len() {
            assert!(parse_bind(&body[..cut]).is_err(), "cut at {cut}");
        }
        // A parameter length of -2 is invalid.
        let mut bad = bind_body("", "", &[], &[None], &[]);
        let at = bad.len() - 6;
        bad[at..at + 4].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(parse_bind(&bad).is_err());
    }

    #[test]
    fn parse_execute_describe_close() {
        let mut body = b"p1\0".to_vec();
        put_i32(&mut body, 100);
        assert_eq!(parse_execute(&body), Ok(("p1", 100)));
        assert!(parse_execute(&body[..4]).is_err());
        assert_eq!(parse_describe_or_close(b"S\0"), Ok((b'S', "")));
        assert_eq!(parse_describe_or_close(b"Pcur\0"), Ok((b'P', "cur")));
        assert!(parse_describe_or_close(b"Xcur\0").is_err());
        assert!(parse_describe_or_close(b"S").is_err());
        assert!(parse_describe_or_close(b"").is_err());
    }

    #[test]
    fn random_bytes_never_panic_frontend_parsers() {
        let mut rng = crate::protocol::describe::tests::Rng::new(11);
        let seeds = [
            parse_body("s", "SELECT $1", &[23]),
            bind_body("p", "s", &[0, 1], &[Some(b"abc"), None], &[1]),
        ];
        for i in 0..50_000 {
            let buf = if i % 2 == 0 {
                rng.bytes(40)
            } else {
                rng.mutate(&seeds[i % seeds.len()])
            };
            let _ = parse_password_message(&buf);
            let _ = parse_sasl_initial_response(&buf);
            let _ = parse_query(&buf);
            let _ = parse_parse(&buf).map(|p| p.param_types.iter().count());
            let _ = parse_bind(&buf).map(|b| {
                b.params.iter().count()
                    + b.param_formats.iter().count()
                    + b.result_formats.iter().count()
            });
            let _ = parse_execute(&buf);
            let _ = parse_describe_or_close(&buf);
        }
    }
}
