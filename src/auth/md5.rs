//! PostgreSQL's MD5 password authentication (AuthenticationMD5Password): the stored hash
//! "md5" + md5(password || user), and the client's answer "md5" + md5(hex(stored) || salt).
//! Pure computation; checking a client's answer never panics, whatever bytes it sent.

use openssl::hash::{hash, MessageDigest};
use openssl::memcmp;

use super::userlist::Secret;

/// Lowercase hex of the MD5 digest of `data`.
///
/// # Panics
/// Only if OpenSSL offers no MD5 at all (an OpenSSL in FIPS mode); `verify` does not panic
/// even then, it reports failure.
pub fn md5_hex(data: &[u8]) -> String {
    try_md5_hex(data).expect("OpenSSL provides no MD5 (FIPS mode?)")
}

/// The hash PostgreSQL stores in pg_authid for an MD5 password: "md5" + md5(password || user).
pub fn password_hash(user: &str, password: &str) -> String {
    format!(
        "md5{}",
        md5_hex(&[password.as_bytes(), user.as_bytes()].concat())
    )
}

/// What a client sends in PasswordMessage for AuthenticationMD5Password with this `salt`:
/// "md5" + md5(hex part of `stored_md5` || salt). `stored_md5` is the "md5..." hash.
pub fn client_response(stored_md5: &str, salt: [u8; 4]) -> String {
    let hex = stored_md5.strip_prefix("md5").unwrap_or(stored_md5);
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt].concat()))
}

/// Checks a client's PasswordMessage payload (without the trailing NUL) against the user's
/// secret. Works for plaintext and MD5 secrets; a SCRAM verifier cannot answer MD5, and an
/// empty password never authenticates (as in PostgreSQL). Constant-time comparison.
pub fn verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let stored = match secret {
        Secret::Plain(password) if password.is_empty() => return false,
        Secret::Plain(password) => {
            match try_md5_hex(&[password.as_bytes(), user.as_bytes()].concat()) {
                Ok(hex) => format!("md5{hex}"),
                Err(_) => return false,
            }
        }
        Secret::Md5(stored) => stored.clone(),
        Secret::Scram(_) => return false,
    };
    let Some(hex) = stored.strip_prefix("md5") else {
        return false;
    };
    let Ok(expected) = try_md5_hex(&[hex.as_bytes(), &salt].concat()) else {
        return false;
    };
    let expected = format!("md5{expected}");
    response.len() == expected.len() && memcmp::eq(response, expected.as_bytes())
}

fn try_md5_hex(data: &[u8]) -> Result<String, String> {
    let digest = hash(MessageDigest::md5(), data).map_err(|e| format!("MD5 unavailable: {e}"))?;
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

    #[test]
    fn md5_hex_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn password_hash_matches_postgresql() {
        assert_eq!(
            password_hash("postgres", "postgres"),
            "md53175bce1d3201d16594cebf9d7eb3f9d"
        );
        // Made by PostgreSQL 15 with password_encryption = md5.
        assert_eq!(
            password_hash("postgres2", "postgres"),
            "md5f2f8915a1d20bb8dcb940115f5bf3c05"
        );
    }

    #[test]
    fn client_response_is_md5_of_hex_and_salt() {
        let stored = "md53175bce1d3201d16594cebf9d7eb3f9d";
        // By hand: md5 over the 32 ASCII hex digits followed by the 4 raw salt bytes.
        let mut input = b"3175bce1d3201d16594cebf9d7eb3f9d".to_vec();
        input.extend_from_slice(&SALT);
        let by_hand = format!("md5{}", md5_hex(&input));
        assert_eq!(client_response(stored, SALT), by_hand);
        assert_eq!(
            client_response(stored, SALT),
            "md568be9ed08db75f318087ab337aaea044"
        );
        assert_ne!(client_response(stored, [1, 2, 3, 5]), by_hand);
    }

    #[test]
    fn verify_accepts_the_right_answer_for_plain_and_md5() {
        let answer = client_response(&password_hash("postgres", "postgres"), SALT);
        let plain = Secret::Plain("postgres".into());
        let md5 = Secret::Md5(password_hash("postgres", "postgres"));
        for secret in [&plain, &md5] {
            assert!(verify(secret, "postgres", SALT, answer.as_bytes()));
            assert!(!verify(secret, "postgres", [0, 0, 0, 0], answer.as_bytes()));
        }
        // The Md5 secret already binds the user name, so only the plaintext one depends on it.
        assert!(!verify(&plain, "other", SALT, answer.as_bytes()));
    }

    #[test]
    fn verify_rejects_wrong_and_malformed_answers() {
        let plain = Secret::Plain("postgres".into());
        let md5 = Secret::Md5(password_hash("postgres", "postgres"));
        let wrong = client_response(&password_hash("postgres", "wrong"), SALT);
        let right = client_response(&password_hash("postgres", "postgres"), SALT);
        for secret in [&plain, &md5] {
            assert!(!verify(secret, "postgres", SALT, wrong.as_bytes()));
            for bad in [
                &b""[..],
                b"md5",
                &right.as_bytes()[..34],
                b"postgres",
                &[0xff; 35],
            ] {
                assert!(!verify(secret, "postgres", SALT, bad));
            }
            let mut longer = right.clone().into_bytes();
            longer.push(0);
            assert!(!verify(secret, "postgres", SALT, &longer));
            assert!(!verify(
                secret,
                "postgres",
                SALT,
                right.to_uppercase().as_bytes()
            ));
        }
    }

    #[test]
    fn verify_refuses_scram_and_empty_passwords() {
        let scram = super::super::userlist::ScramSecret::from_password("postgres", b"salt", 1);
        let answer = client_response(&password_hash("postgres", "postgres"), SALT);
        assert!(!verify(
            &Secret::Scram(scram),
            "postgres",
            SALT,
            answer.as_bytes()
        ));
        let empty = client_response(&password_hash("postgres", ""), SALT);
        assert!(!verify(
            &Secret::Plain(String::new()),
            "postgres",
            SALT,
            empty.as_bytes()
        ));
    }
}
