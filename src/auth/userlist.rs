//! The `auth_file` in PgBouncer's userlist format: one `"user" "secret"` line per user, where
//! the secret is a plaintext password, an MD5 hash ("md5" + 32 hex digits, as in pg_authid) or
//! a SCRAM-SHA-256 verifier. This file owns reading that file into a `UserList` and the
//! `Secret` types; it never prints a secret, not even in `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use openssl::sha::sha256;

use super::scram;
use super::{decode_base64, encode_base64};

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A user's secret as written in the auth_file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password.
    Plain(String),
    /// "md5" + 32 lowercase hex digits, exactly as in the file (md5(password || user)).
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

/// A SCRAM-SHA-256 verifier: "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// The users of the auth_file and their secrets.
#[derive(Clone, Default)]
pub struct UserList {
    users: HashMap<String, Secret>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Secret::Plain(_) => "Plain",
            Secret::Md5(_) => "Md5",
            Secret::Scram(_) => "Scram",
        };
        write!(f, "Secret::{kind}(<masked>)")
    }
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScramSecret(iterations={}, <masked>)", self.iterations)
    }
}

impl fmt::Debug for UserList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        f.debug_struct("UserList").field("users", &users).finish()
    }
}

impl Secret {
    /// Classifies a secret from the auth_file. Text that starts like an MD5 hash or a SCRAM
    /// verifier must be one: a damaged hash is an error, never a plaintext password.
    pub fn parse(s: &str) -> Result<Secret, String> {
        if let Some(hex) = s.strip_prefix("md5") {
            if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(
                    "secret starts with \"md5\" but is not \"md5\" + 32 lowercase hex digits"
                        .to_string(),
                );
            }
            return Ok(Secret::Md5(s.to_string()));
        }
        if s.starts_with(SCRAM_PREFIX) {
            return ScramSecret::parse(s).map(Secret::Scram);
        }
        Ok(Secret::Plain(s.to_string()))
    }
}

impl ScramSecret {
    /// The verifier PostgreSQL would store for this password, salt and iteration count.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = scram::salted_password(password.as_bytes(), salt, iterations);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&scram::client_key(&salted)),
            server_key: scram::server_key(&salted),
        }
    }

    /// A verifier for a plaintext password, with a fresh random 16-byte salt and
    /// PostgreSQL's default iteration count.
    pub fn with_random_salt(password: &str) -> ScramSecret {
        let mut salt = [0u8; 16];
        // A failing generator leaves zeros: still a valid verifier, only a guessable salt.
        let _ = openssl::rand::rand_bytes(&mut salt);
        ScramSecret::from_password(password, &salt, scram::DEFAULT_ITERATIONS)
    }

    /// Parses "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>".
    pub fn parse(s: &str) -> Result<ScramSecret, String> {
        let bad = |what: &str| format!("bad SCRAM-SHA-256 verifier: {what}");
        let body = s
            .strip_prefix(SCRAM_PREFIX)
            .ok_or_else(|| bad("does not start with \"SCRAM-SHA-256$\""))?;
        let (params, keys) = body
            .split_once('$')
            .ok_or_else(|| bad("expected <iterations>:<salt>$<StoredKey>:<ServerKey>"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("expected <iterations>:<salt> after \"SCRAM-SHA-256$\""))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or_else(|| bad("expected <StoredKey>:<ServerKey> after the salt"))?;
        let iterations = scram::parse_iterations(iterations).map_err(|e| bad(&e))?;
        let salt = decode_base64(salt).map_err(|e| bad(&format!("salt: {e}")))?;
        if salt.is_empty() {
            return Err(bad("empty salt"));
        }
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: decode_key(stored_key, "StoredKey").map_err(|e| bad(&e))?,
            server_key: decode_key(server_key, "ServerKey").map_err(|e| bad(&e))?,
        })
    }

    /// The verifier as PostgreSQL writes it in pg_authid (and the auth_file holds it).
    pub fn to_verifier(&self) -> String {
        format!(
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            encode_base64(&self.salt),
            encode_base64(&self.stored_key),
            encode_base64(&self.server_key)
        )
    }
}

fn decode_key(b64: &str, name: &str) -> Result<[u8; 32], String> {
    let bytes = decode_base64(b64).map_err(|e| format!("{name}: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{name} is {} bytes, expected 32", bytes.len()))
}

impl UserList {
    /// Parses auth_file text; errors read "FILE:LINE: what is wrong". A user listed twice is
    /// an error rather than PgBouncer's silent "last one wins".
    pub fn parse(text: &str, file_name: &str) -> Result<UserList, String> {
        let mut users = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let at = |msg: String| format!("{file_name}:{line_no}: {msg}");
            let Some((user, secret)) = parse_line(line).map_err(at)? else {
                continue;
            };
            if let Some(earlier) = first_line.get(&user) {
                return Err(at(format!(
                    "user \"{user}\" is already listed on line {earlier}"
                )));
            }
            let secret = Secret::parse(&secret).map_err(|e| at(format!("user \"{user}\": {e}")))?;
            first_line.insert(user.clone(), line_no);
            users.insert(user, secret);
        }
        Ok(UserList { users })
    }

    /// Reads and parses an auth_file; every error names the path.
    pub fn load(path: &Path) -> Result<UserList, String> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
        UserList::parse(&text, &name)
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One line: `Ok(None)` for blank lines and comments, else the user name and the secret text.
fn parse_line(line: &str) -> Result<Option<(String, String)>, String> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
        return Ok(None);
    }
    let (user, rest) = quoted(rest, "user name")?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err(format!(
            "user \"{user}\" has no password; expected \"user\" \"password\""
        ));
    }
    let (secret, _ignored) = quoted(rest, "password")?;
    if user.is_empty() {
        return Err("empty user name".to_string());
    }
    if user.contains('\0') || secret.contains('\0') {
        return Err("NUL character in a user name or password".to_string());
    }
    Ok(Some((user, secret)))
}

/// Reads a double-quoted field at the start of `text` (`""` is a literal quote) and returns
/// it with the text after the closing quote.
fn quoted<'a>(text: &'a str, what: &str) -> Result<(String, &'a str), String> {
    let Some(body) = text.strip_prefix('"') else {
        return Err(format!(
            "expected a double-quoted {what}; lines read \"user\" \"password\""
        ));
    };
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            value.push(c);
            continue;
        }
        if body[i + 1..].starts_with('"') {
            value.push('"');
            chars.next();
            continue;
        }
        return Ok((value, &body[i + 1..]));
    }
    Err(format!("unterminated quoted {what} (missing closing '\"')"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PENCIL_VERIFIER: &str = "SCRAM-SHA-256$4096:5eveBbz/fX3z+5+38/CX7A==$\
        Bfr7Q/i+jD0NFxtUO4HJF+khrnd/ZWO6atpmD9m3Emk=:+95744Lc0kWk4nO2GLADUbHvcpNuRW6vBhrYXRBoIio=";

    fn parse(text: &str) -> Result<UserList, String> {
        UserList::parse(text, "users.txt")
    }

    #[test]
    fn reads_all_three_kinds_of_secret() {
        let text = format!(
            "\"alice\" \"wonderland\"\n\
             \"bob\" \"md53175bce1d3201d16594cebf9d7eb3f9d\"\n\
             \"carol\" \"{PENCIL_VERIFIER}\"\n"
        );
        let list = parse(&text).unwrap();
        assert_eq!(list.len(), 3);
        assert!(!list.is_empty());
        assert_eq!(list.get("alice"), Some(&Secret::Plain("wonderland".into())));
        assert_eq!(
            list.get("bob"),
            Some(&Secret::Md5("md53175bce1d3201d16594cebf9d7eb3f9d".into()))
        );
        let Some(Secret::Scram(scram)) = list.get("carol") else {
            panic!("carol should have a SCRAM secret");
        };
        assert_eq!(scram.iterations, 4096);
        assert_eq!(scram.salt.len(), 16);
        assert_eq!(scram.to_verifier(), PENCIL_VERIFIER);
        assert_eq!(list.get("dave"), None);
    }

    #[test]
    fn quotes_comments_blank_lines_and_trailing_text() {
        let text = "; PgBouncer comment\n\
                    # shell comment\n\
                    \n   \t\n\
                    \"say \"\"hi\"\"\" \"pa\"\"ss word\"\n\
                    \t \"spaced\"\t\t\"x\"  trailing words are ignored\r\n\
                    \"tight\"\"\"  \"\"\n\
                    \"üser\" \"\"\n";
        let list = parse(text).unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(
            list.get("say \"hi\""),
            Some(&Secret::Plain("pa\"ss word".into()))
        );
        assert_eq!(list.get("spaced"), Some(&Secret::Plain("x".into())));
        // `"tight"""  ""`: the user is `tight"` (escaped quote), the password is empty.
        assert_eq!(list.get("tight\""), Some(&Secret::Plain(String::new())));
        assert_eq!(list.get("üser"), Some(&Secret::Plain(String::new())));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# only a comment").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let cases = [
            (
                "\"a\" \"x\"\nalice pass\n",
                "users.txt:2: expected a double-quoted user name",
            ),
            (
                "\n\n\"alice\n",
                "users.txt:3: unterminated quoted user name",
            ),
            (
                "\"alice\" \"pass\n",
                "users.txt:1: unterminated quoted password",
            ),
            (
                "#\n\"alice\"\n",
                "users.txt:2: user \"alice\" has no password",
            ),
            (
                "\"alice\" pass\n",
                "users.txt:1: expected a double-quoted password",
            ),
            ("\"\" \"pass\"\n", "users.txt:1: empty user name"),
            (
                "\"a\" \"1\"\n\"b\" \"2\"\n\"a\" \"3\"",
                "users.txt:3: user \"a\" is already listed on line 1",
            ),
            (
                "\"a\" \"md5abc\"",
                "users.txt:1: user \"a\": secret starts with \"md5\"",
            ),
            (
                "\"a\" \"SCRAM-SHA-256$x\"",
                "users.txt:1: user \"a\": bad SCRAM-SHA-256 verifier",
            ),
            ("\"a\0\" \"x\"", "users.txt:1: NUL character"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                err.starts_with(want),
                "for {text:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn md5_secrets_must_be_well_formed() {
        let good = "md53175bce1d3201d16594cebf9d7eb3f9d";
        assert_eq!(Secret::parse(good), Ok(Secret::Md5(good.into())));
        for bad in [
            "md5",
            "md53175bce1d3201d16594cebf9d7eb3f9",
            "md53175bce1d3201d16594cebf9d7eb3f9d0",
            "md53175BCE1d3201d16594cebf9d7eb3f9d",
            "md53175bce1d3201d16594cebf9d7eb3f9g",
            "md5rocks",
        ] {
            assert!(Secret::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            Secret::parse("MD5rocks"),
            Ok(Secret::Plain("MD5rocks".into()))
        );
    }

    #[test]
    fn scram_secrets_must_be_well_formed() {
        assert!(matches!(
            Secret::parse(PENCIL_VERIFIER),
            Ok(Secret::Scram(_))
        ));
        let (head, tail) = PENCIL_VERIFIER.split_at(PENCIL_VERIFIER.len() - 10);
        for bad in [
            "SCRAM-SHA-256$".to_string(),
            PENCIL_VERIFIER.replace("4096:", "0:"),
            PENCIL_VERIFIER.replace("4096:", "-1:"),
            PENCIL_VERIFIER.replace("4096:", "4294967296:"),
            PENCIL_VERIFIER.replace("4096:", "2147483648:"),
            PENCIL_VERIFIER.replace("4096:", ":"),
            PENCIL_VERIFIER.replace("4096:", "4096"),
            PENCIL_VERIFIER.replace("5eveBbz/fX3z+5+38/CX7A==", ""),
            PENCIL_VERIFIER.replace("5eveBbz/fX3z+5+38/CX7A==", "5eve Bbz/fX3z+5+38/CX7A=="),
            PENCIL_VERIFIER.replace("=:+9", ":+9"),
            PENCIL_VERIFIER.replace("Emk=:", "Emk="),
            PENCIL_VERIFIER.replace("Bfr7Q/", ""),
            format!("{PENCIL_VERIFIER}AAAA"),
            format!("{head}*{tail}"),
        ] {
            assert!(Secret::parse(&bad).is_err(), "accepted {bad:?}");
        }
        let max = PENCIL_VERIFIER.replace("4096:", "2147483647:");
        assert!(
            matches!(Secret::parse(&max), Ok(Secret::Scram(s)) if s.iterations == i32::MAX as u32)
        );
    }

    #[test]
    fn from_password_matches_postgresql_verifiers() {
        // Made by PostgreSQL 15: CREATE ROLE ... PASSWORD '...'; SELECT rolpassword ...
        let real = [
            ("pencil", PENCIL_VERIFIER),
            (
                "pässword",
                "SCRAM-SHA-256$4096:jHSFHZtgisMW+THI1PcB7A==$YlCzZGiub0XerxggizkrtGylnEA3pdpNvirg1u7Zuhc=:qFx0yWJfBMOW7Q2Gyw1sl9tM/qyyLmhv5c0YiULEhm4=",
            ),
        ];
        for (password, verifier) in real {
            let stored = ScramSecret::parse(verifier).unwrap();
            let made = ScramSecret::from_password(password, &stored.salt, stored.iterations);
            assert_eq!(made, stored);
            assert_eq!(made.to_verifier(), verifier);
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let text = format!(
            "\"alice\" \"wonderland\"\n\"bob\" \"md53175bce1d3201d16594cebf9d7eb3f9d\"\n\"carol\" \"{PENCIL_VERIFIER}\""
        );
        let list = parse(&text).unwrap();
        let shown = format!(
            "{:?} {:?} {:?} {list:?} {:#?}",
            list.get("alice").unwrap(),
            list.get("bob").unwrap(),
            list.get("carol").unwrap(),
            list.get("carol").unwrap(),
        );
        assert!(shown.contains("Secret::Plain(<masked>)"), "{shown}");
        assert!(shown.contains("Secret::Md5(<masked>)"), "{shown}");
        assert!(shown.contains("Secret::Scram(<masked>)"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        for secret in ["wonderland", "3175bce1", "5eveBbz", "Bfr7Q", "+95744"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let scram = ScramSecret::parse(PENCIL_VERIFIER).unwrap();
        assert_eq!(
            format!("{scram:?}"),
            "ScramSecret(iterations=4096, <masked>)"
        );
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("pgmulti-userlist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "\"alice\" \"x\"\n").unwrap();
        assert_eq!(UserList::load(&good).unwrap().len(), 1);
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "\"alice\" \"x\"\nnope\n").unwrap();
        let err = UserList::load(&bad).unwrap_err();
        assert!(err.starts_with(&format!("{}:2: ", bad.display())), "{err}");
        let missing = dir.join("missing.txt");
        let err = UserList::load(&missing).unwrap_err();
        assert!(
            err.starts_with(&format!("{}: cannot read", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = [
            '"', ' ', '\n', ';', '#', 'a', 'm', 'd', '5', '$', ':', '=', 'é', '\0',
        ];
        for _ in 0..2000 {
            let len = (next(&mut seed) % 40) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next(&mut seed) % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse(&text);
            let _ = Secret::parse(&text);
        }
    }

    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
}
