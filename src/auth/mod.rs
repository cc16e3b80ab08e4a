//! Authentication: who may connect, and how a password is proven without networking.
//!
//! `userlist` reads the PgBouncer-style `auth_file`; `md5` and `scram` implement PostgreSQL's
//! MD5 and SCRAM-SHA-256 exchanges as pure message-in/message-out logic. This module owns the
//! strict base64 both of them use. Nothing here touches a socket or a clock, and nothing
//! here panics on bytes that came from a client, a node or a file.

pub mod md5;
pub mod scram;
pub mod userlist;

/// Longest base64 text we accept: far above any salt, key or proof (a bound, not a format rule).
const BASE64_MAX_LEN: usize = 4096;

/// Standard base64 (RFC 4648, with `=` padding), as SCRAM messages and verifiers use it.
pub(crate) fn encode_base64(data: &[u8]) -> String {
    if data.is_empty() {
        return String::new();
    }
    openssl::base64::encode_block(data)
}

/// Decodes standard padded base64, rejecting whitespace, stray characters, misplaced padding
/// and non-canonical trailing bits, so that one secret has exactly one spelling.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    if text.len() > BASE64_MAX_LEN {
        return Err(format!(
            "base64 value is too long ({} characters)",
            text.len()
        ));
    }
    if !text.len().is_multiple_of(4) {
        return Err("base64 value has a length that is not a multiple of 4".to_string());
    }
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    if padding > 2 {
        return Err("base64 value has too much '=' padding".to_string());
    }
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/'))
    {
        return Err(format!("base64 value contains {bad:?}"));
    }
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let decoded = openssl::base64::decode_block(text)
        .map_err(|e| format!("base64 value cannot be decoded: {e}"))?;
    if encode_base64(&decoded) != text {
        return Err("base64 value is not in canonical form".to_string());
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=40u8).map(|b| b.wrapping_mul(37)).collect();
        for n in 0..data.len() {
            let text = encode_base64(&data[..n]);
            assert_eq!(decode_base64(&text).as_deref(), Ok(&data[..n]));
        }
    }

    #[test]
    fn base64_rejects_sloppy_spellings() {
        for bad in [
            "biw", "bi ws", " biws", "biws\n", "b!ws", "====", "b===", "bi=s", "YQ=a", "YR==",
        ] {
            assert!(decode_base64(bad).is_err(), "accepted {bad:?}");
        }
        assert!(decode_base64(&"A".repeat(BASE64_MAX_LEN + 4)).is_err());
        assert_eq!(decode_base64("biws").as_deref(), Ok(&b"n,,"[..]));
    }
}
