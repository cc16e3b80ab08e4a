//! Message boundaries and the bytes inside them: the 5-byte tagged header, the untagged
//! startup packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), the `Reader`
//! cursor the parsers use, and the helpers the builders use to write a frame.
//!
//! Every length read from the network is checked before it is used to slice; nothing here
//! allocates except on the error path.

use std::fmt;

use super::{
    ProtocolError, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET, SSL_REQUEST_CODE,
};

/// The header of a tagged message at the start of `buf`.
///
/// `Ok(None)` until 5 bytes are present; `Ok(Some((tag, total_len)))` where
/// `total_len = 1 + length field`; `Err` for a length field below 4 or above `max_len`.
pub fn message_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    let (Some(&tag), Some(len)) = (buf.first(), read_i32(buf, 1)) else {
        return Ok(None);
    };
    if len < 4 {
        return Err(ProtocolError(format!("invalid message length {len}")));
    }
    // len >= 4, so the cast is lossless.
    let len = len as usize;
    if len > max_len {
        return Err(ProtocolError(format!(
            "message of {len} bytes exceeds the limit of {max_len}"
        )));
    }
    Ok(Some((tag, len + 1)))
}

/// The header of the untagged first packet at the start of `buf`.
///
/// `Ok(None)` until 4 bytes are present; `Ok(Some(total_len))` (the length field, which counts
/// itself); `Err` when the length is below 8 or above [`MAX_STARTUP_PACKET`].
pub fn startup_header(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(len) = read_i32(buf, 0) else {
        return Ok(None);
    };
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(ProtocolError(format!(
            "invalid length of startup packet: {len}"
        )));
    }
    Ok(Some(len as usize))
}

/// A decoded untagged first packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartupPacket<'a> {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        process_id: u32,
        secret_key: u32,
    },
    Startup {
        version: u32,
        params: StartupParams<'a>,
    },
}

/// The parameters of a StartupMessage, validated at parse time (UTF-8, NUL terminators, final
/// terminator). Iterating yields `(name, value)` pairs without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupParams<'a> {
    /// `name\0value\0` pairs, without the final terminator.
    pairs: &'a str,
}

impl<'a> StartupParams<'a> {
    /// The value of parameter `name`, if the client sent it (the first one wins).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|&(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> StartupParamsIter<'a> {
        StartupParamsIter { rest: self.pairs }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl<'a> IntoIterator for StartupParams<'a> {
    type Item = (&'a str, &'a str);
    type IntoIter = StartupParamsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the `(name, value)` pairs of a StartupMessage.
#[derive(Debug, Clone)]
pub struct StartupParamsIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for StartupParamsIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let (name, rest) = self.rest.split_once('\0')?;
        let (value, rest) = rest.split_once('\0')?;
        self.rest = rest;
        Some((name, value))
    }
}

/// Why a first packet was refused, and whether the client is told: PostgreSQL only logs a
/// packet of the wrong length (a COMMERROR, then it closes) but answers an unsupported
/// protocol version or a bad parameter layout with a FATAL ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupError {
    /// The SQLSTATE of the FATAL sent to the client; `None`: logged only.
    pub code: Option<&'static str>,
    pub message: String,
    /// The client asked for protocol 1 or 2: the FATAL goes in that protocol's format.
    pub legacy: bool,
}

impl StartupError {
    fn logged(message: String) -> StartupError {
        StartupError {
            code: None,
            message,
            legacy: false,
        }
    }

    fn layout() -> StartupError {
        StartupError {
            code: Some("08P01"),
            message: "invalid startup packet layout: expected terminator as last byte".into(),
            legacy: false,
        }
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Decode a whole untagged packet (`packet` includes its 4-byte length).
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket<'_>, StartupError> {
    let wrong_length = || {
        StartupError::logged(format!(
            "invalid length of startup packet: {} bytes",
            packet.len()
        ))
    };
    let mut r = Reader::new(packet);
    let len = r.i32().map_err(|_| wrong_length())?;
    if len < 8 || len as usize != packet.len() {
        return Err(wrong_length());
    }
    let code = r.u32().map_err(|_| wrong_length())?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            r.finish().map_err(|_| wrong_length())?;
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            let (Ok(process_id), Ok(secret_key)) = (r.u32(), r.u32()) else {
                return Err(wrong_length());
            };
            r.finish().map_err(|_| wrong_length())?;
            Ok(StartupPacket::CancelRequest {
                process_id,
                secret_key,
            })
        }
        version => {
            let (major, minor) = (version >> 16, version & 0xffff);
            if major != 3 {
                return Err(StartupError {
                    code: Some("0A000"),
                    message: format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                    legacy: major < 3,
                });
            }
            let params = parse_startup_params(r.rest())?;
            Ok(StartupPacket::Startup { version, params })
        }
    }
}

/// Validate `name\0value\0 … \0` and return the pairs without the final terminator.
fn parse_startup_params(bytes: &[u8]) -> Result<StartupParams<'_>, StartupError> {
    let text = std::str::from_utf8(bytes).map_err(|_| StartupError {
        code: Some("08P01"),
        message: "invalid UTF-8 in startup packet".into(),
        legacy: false,
    })?;
    let mut rest = text;
    loop {
        let Some((name, after_name)) = rest.split_once('\0') else {
            return Err(StartupError::layout());
        };
        if name.is_empty() {
            if !after_name.is_empty() {
                return Err(StartupError::layout());
            }
            break;
        }
        let Some((_value, after_value)) = after_name.split_once('\0') else {
            return Err(StartupError::layout());
        };
        rest = after_value;
    }
    // The loop ended on the final terminator, which is the last byte.
    let pairs = text.get(..text.len().saturating_sub(1)).unwrap_or_default();
    Ok(StartupParams { pairs })
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

/// Why a [`Reader`] could not decode what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes remain than the field needs.
    UnexpectedEnd,
    /// A string field has no NUL terminator before the end of the message.
    MissingTerminator,
    /// A string field is not valid UTF-8.
    InvalidUtf8,
    /// Bytes remain after the last field.
    TrailingBytes(usize),
    /// A field holds a value the protocol does not allow.
    Invalid(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnexpectedEnd => f.write_str("unexpected end of message"),
            DecodeError::MissingTerminator => f.write_str("string without NUL terminator"),
            DecodeError::InvalidUtf8 => f.write_str("invalid UTF-8 in string"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes at end of message"),
            DecodeError::Invalid(what) => f.write_str(what),
        }
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError(e.to_string())
    }
}

/// A cursor over a message body. Every read checks the remaining length first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unread bytes (not consumed).
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Consume and return all unread bytes.
    pub fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.bytes(N)?
            .try_into()
            .map_err(|_| DecodeError::UnexpectedEnd)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A count field (Int16) that must not be negative.
    pub fn count16(&mut self) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| DecodeError::Invalid("negative count"))
    }

    /// A NUL-terminated string as bytes, without its terminator.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingTerminator)?;
        let s = self.bytes(end)?;
        self.bytes(1)?;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    pub fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.cstr_bytes()?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Succeed only when every byte has been read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Start a tagged message in `out`; returns the position to pass to [`finish_message`].
pub fn begin_message(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    begin_untagged(out)
}

/// Start an untagged packet (the startup family) in `out`; returns its start position.
pub fn begin_untagged(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    start
}

/// Patch the length field written by [`begin_message`] / [`begin_untagged`].
pub fn finish_message(out: &mut [u8], start: usize) {
    let len = out.len().saturating_sub(start);
    debug_assert!(len <= i32::MAX as usize, "message too long to frame");
    if let Some(field) = out.get_mut(start..start + 4) {
        field.copy_from_slice(&(len as u32).to_be_bytes());
    }
}

/// Append `s` as a NUL-terminated string. A NUL inside `s` cannot be represented, so the string
/// is cut there; the frame stays well formed.
pub fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    out.extend_from_slice(s.get(..end).unwrap_or_default());
    out.push(0);
}

pub fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::super::{frontend, MAX_MESSAGE_LEN, PROTOCOL_3_0};
    use super::*;

    #[test]
    fn message_header_waits_for_five_bytes() {
        assert_eq!(message_header(b"", MAX_MESSAGE_LEN), Ok(None));
        assert_eq!(message_header(b"Q\0\0\0", MAX_MESSAGE_LEN), Ok(None));
        assert_eq!(
            message_header(b"Q\0\0\0\x0d", MAX_MESSAGE_LEN),
            Ok(Some((b'Q', 14)))
        );
    }

    #[test]
    fn message_header_of_exact_message() {
        let mut buf = Vec::new();
        frontend::query(&mut buf, "SELECT 1");
        let (tag, total) = message_header(&buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((tag, total), (b'Q', buf.len()));
        frontend::sync(&mut buf);
        let (tag, total) = message_header(&buf[total..], MAX_MESSAGE_LEN)
            .unwrap()
            .unwrap();
        assert_eq!((tag, total), (b'S', 5));
    }

    #[test]
    fn message_header_rejects_short_length() {
        for len in [0u32, 1, 3, 0xffff_ffff] {
            let mut buf = vec![b'Q'];
            buf.extend_from_slice(&len.to_be_bytes());
            let err = message_header(&buf, MAX_MESSAGE_LEN).unwrap_err();
            assert!(err.0.starts_with("invalid message length"), "{err}");
        }
        // Exactly 4 is an empty body, which is fine.
        assert_eq!(
            message_header(b"S\0\0\0\x04", MAX_MESSAGE_LEN),
            Ok(Some((b'S', 5)))
        );
    }

    #[test]
    fn message_header_rejects_oversized_length() {
        let mut buf = vec![b'Q'];
        buf.extend_from_slice(&(1u32 << 31).to_be_bytes());
        assert!(message_header(&buf, MAX_MESSAGE_LEN).is_err());

        let mut buf = vec![b'd'];
        buf.extend_from_slice(&0x4000_0000u32.to_be_bytes());
        let err = message_header(&buf, MAX_MESSAGE_LEN).unwrap_err();
        assert_eq!(
            err.0,
            format!("message of 1073741824 bytes exceeds the limit of {MAX_MESSAGE_LEN}")
        );
        // A caller-chosen smaller limit.
        assert!(message_header(b"Q\0\0\x01\x00", 255).is_err());
        assert_eq!(message_header(b"Q\0\0\0\xff", 255), Ok(Some((b'Q', 256))));
    }

    #[test]
    fn startup_header_bounds() {
        assert_eq!(startup_header(b"\0\0\0"), Ok(None));
        assert_eq!(startup_header(b"\0\0\0\x08"), Ok(Some(8)));
        assert!(startup_header(b"\0\0\0\x07").is_err());
        assert!(startup_header(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let max = (MAX_STARTUP_PACKET as u32).to_be_bytes();
        assert_eq!(startup_header(&max), Ok(Some(MAX_STARTUP_PACKET)));
        let over = (MAX_STARTUP_PACKET as u32 + 1).to_be_bytes();
        assert!(startup_header(&over).is_err());
    }

    #[test]
    fn parse_ssl_request() {
        let mut buf = Vec::new();
        frontend::ssl_request(&mut buf);
        assert_eq!(startup_header(&buf), Ok(Some(8)));
        assert_eq!(parse_startup(&buf), Ok(StartupPacket::SslRequest));
    }

    #[test]
    fn parse_gssenc_request() {
        let mut buf = vec![0, 0, 0, 8];
        buf.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(parse_startup(&buf), Ok(StartupPacket::GssEncRequest));
        buf.push(0);
        buf[3] = 9;
        assert!(parse_startup(&buf).is_err());
    }

    #[test]
    fn parse_cancel_request() {
        let mut buf = Vec::new();
        frontend::cancel_request(&mut buf, 4242, 0xdead_beef);
        assert_eq!(startup_header(&buf), Ok(Some(16)));
        assert_eq!(
            parse_startup(&buf),
            Ok(StartupPacket::CancelRequest {
                process_id: 4242,
                secret_key: 0xdead_beef
            })
        );
        // Missing key.
        let mut short = buf[..12].to_vec();
        short[3] = 12;
        assert!(parse_startup(&short).is_err());
    }

    #[test]
    fn parse_startup_params() {
        let mut buf = Vec::new();
        frontend::startup_message(
            &mut buf,
            &[("user", "alice"), ("database", "shop"), ("options", "")],
        );
        let StartupPacket::Startup { version, params } = parse_startup(&buf).unwrap() else {
            panic!("not a StartupMessage");
        };
        assert_eq!(version, PROTOCOL_3_0);
        assert_eq!(params.get("user"), Some("alice"));
        assert_eq!(params.get("database"), Some("shop"));
        assert_eq!(params.get("options"), Some(""));
        assert_eq!(params.get("application_name"), None);
        let all: Vec<_> = params.iter().collect();
        assert_eq!(
            all,
            [("user", "alice"), ("database", "shop"), ("options", "")]
        );
    }

    #[test]
    fn parse_startup_without_params() {
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[]);
        let StartupPacket::Startup { params, .. } = parse_startup(&buf).unwrap() else {
            panic!("not a StartupMessage");
        };
        assert!(params.is_empty());
        assert_eq!(params.iter().count(), 0);
    }

    #[test]
    fn parse_startup_accepts_newer_minor_version() {
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[("user", "u")]);
        buf[7] = 2; // 3.2
        assert!(matches!(
            parse_startup(&buf),
            Ok(StartupPacket::Startup {
                version: 196_610,
                ..
            })
        ));
    }

    #[test]
    fn parse_startup_rejects_bad_protocol() {
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[("user", "u")]);
        buf[4..8].copy_from_slice(&(2u32 << 16).to_be_bytes());
        assert_eq!(
            parse_startup(&buf).unwrap_err(),
            StartupError {
                code: Some("0A000"),
                message: "unsupported frontend protocol 2.0: server supports 3.0 to 3.0".into(),
                legacy: true,
            }
        );
    }

    #[test]
    fn parse_startup_rejects_missing_terminator() {
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[("user", "alice")]);
        buf.pop();
        let n = buf.len() as u32;
        buf[..4].copy_from_slice(&n.to_be_bytes());
        assert!(parse_startup(&buf).is_err());

        // Name without value.
        let mut buf = vec![0, 0, 0, 0];
        buf.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        buf.extend_from_slice(b"user\0");
        let n = buf.len() as u32;
        buf[..4].copy_from_slice(&n.to_be_bytes());
        assert!(parse_startup(&buf).is_err());

        // Bytes after the terminator.
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[("user", "alice")]);
        buf.extend_from_slice(b"x\0");
        let n = buf.len() as u32;
        buf[..4].copy_from_slice(&n.to_be_bytes());
        assert!(parse_startup(&buf).is_err());
    }

    #[test]
    fn parse_startup_rejects_wrong_length_and_bad_utf8() {
        let mut buf = Vec::new();
        frontend::startup_message(&mut buf, &[("user", "alice")]);
        assert!(parse_startup(&buf[..buf.len() - 1]).is_err());
        let mut bad = buf.clone();
        let at = bad.len() - 3;
        bad[at] = 0xff;
        assert!(parse_startup(&bad).is_err());
        assert_eq!(
            parse_startup(b"").unwrap_err().code,
            None,
            "logged, not answered"
        );
        assert_eq!(parse_startup(b"\0\0\0\x04").unwrap_err().code, None);
        assert_eq!(parse_startup(&bad).unwrap_err().code, Some("08P01"));
    }

    #[test]
    fn reader_reads_fields_and_checks_bounds() {
        let mut r = Reader::new(b"\x01\xff\xfe\0\0\0\x07ab\0cd");
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.i16(), Ok(-2));
        assert_eq!(r.i32(), Ok(7));
        assert_eq!(r.cstr(), Ok("ab"));
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.clone().cstr(), Err(DecodeError::MissingTerminator));
        assert_eq!(r.i32(), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(2)));
        assert_eq!(r.bytes(3), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.bytes(usize::MAX), Err(DecodeError::UnexpectedEnd));
        assert_eq!(r.bytes(2), Ok(&b"cd"[..]));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            Reader::new(b"\xff\xff").count16(),
            Err(DecodeError::Invalid("negative count"))
        );
        assert_eq!(Reader::new(b"\xc3\0").cstr(), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn put_cstr_cuts_at_interior_nul() {
        let mut out = Vec::new();
        put_cstr(&mut out, b"ab\0cd");
        assert_eq!(out, b"ab\0");
    }

    #[test]
    fn random_bytes_never_panic_framing() {
        let mut rng = crate::protocol::describe::tests::Rng::new(7);
        for _ in 0..20_000 {
            let buf = rng.bytes(24);
            let _ = message_header(&buf, MAX_MESSAGE_LEN);
            let _ = message_header(&buf, 0);
            let _ = startup_header(&buf);
            let _ = parse_startup(&buf);
            // Give parse_startup a consistent length field too.
            let mut packet = buf.clone();
            if packet.len() >= 8 {
                let n = packet.len() as u32;
                packet[..4].copy_from_slice(&n.to_be_bytes());
                if rng.below(2) == 0 {
                    packet[4..8].copy_from_slice(&PROTOCOL_3_0.to_be_bytes());
                }
                let _ = parse_startup(&packet);
            }
        }
    }
}
