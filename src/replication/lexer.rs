//! The SQL tokenizer: PostgreSQL's lexical structure, borrowed from the query text.
//!
//! Owns: splitting SQL text into tokens (identifiers, quoted identifiers, string constants in
//! every form, dollar quotes, numbers, `$n` parameters, operators, punctuation), skipping
//! whitespace and comments, and splitting a query string into its top-level statements.
//! Tokens borrow from the input; nothing here allocates or panics, whatever the bytes.
//! It must not decide what a statement means: that is `classify`'s job.
//!
//! Lexing follows the server with `standard_conforming_strings = on` (the default since
//! PostgreSQL 9.1): a backslash escapes a quote only inside `E'…'`.
//! An unterminated quote, dollar quote or block comment ends the input with one token whose
//! `unterminated` flag is set (for a comment, a `TokenKind::Comment` token), so a caller can
//! treat the statement as "unsure".

/// PostgreSQL's identifier buffer size; names are truncated to `NAMEDATALEN - 1` bytes.
pub const NAMEDATALEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An unquoted identifier or key word (compare with [`Token::is_kw`]).
    Ident,
    /// `"name"` (with `""` escapes) or `U&"name"`.
    QuotedIdent,
    /// A string constant: `'…'`, `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'` or `$tag$…$tag$`.
    String,
    /// A numeric constant.
    Number,
    /// A positional parameter `$n`.
    Param,
    /// An operator: a run of `+ - * / < > = ~ ! @ # % ^ & | ` ?`.
    Operator,
    /// The type cast `::`.
    Cast,
    /// One of `( ) [ ] , ; . :`.
    Punct(u8),
    /// Only emitted for an unterminated block comment (complete comments are skipped).
    Comment,
    /// A character PostgreSQL's lexer would reject (e.g. `{`, a lone `$`, a control byte).
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokenKind,
    /// The token exactly as written, including quotes and prefixes.
    pub text: &'a str,
    /// Byte offset of `text` in the lexed input.
    pub start: usize,
    /// The quote, dollar quote or comment ran to the end of the input.
    pub unterminated: bool,
}

impl<'a> Token<'a> {
    /// Is this the unquoted key word `kw` (given in lower case)? Never allocates.
    #[inline]
    pub fn is_kw(&self, kw: &str) -> bool {
        self.kind == TokenKind::Ident && self.text.eq_ignore_ascii_case(kw)
    }

    /// Is this the punctuation character `c`?
    #[inline]
    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == TokenKind::Punct(c)
    }

    /// Is this an identifier, quoted or not?
    #[inline]
    pub fn is_name(&self) -> bool {
        matches!(self.kind, TokenKind::Ident | TokenKind::QuotedIdent)
    }

    /// Byte offset just past the token.
    #[inline]
    pub fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// The contents of a string constant without prefix and delimiters (escapes are not
    /// processed). For other tokens, the text itself.
    pub fn string_body(&self) -> &'a str {
        if self.kind != TokenKind::String {
            return self.text;
        }
        let t = self.text;
        if let Some(after) = t.strip_prefix('$') {
            // $tag$ … $tag$
            let open = match after.find('$') {
                Some(i) => i + 2,
                None => return "",
            };
            if self.unterminated {
                return &t[open..];
            }
            let close = t.len().saturating_sub(open);
            return t.get(open..close.max(open)).unwrap_or("");
        }
        let open = match t.find('\'') {
            Some(i) => i + 1,
            None => return "",
        };
        if self.unterminated || t.len() <= open {
            return &t[open..];
        }
        t.get(open..t.len() - 1).unwrap_or("")
    }
}

/// Folds an identifier token's text the way PostgreSQL resolves it: unquoted names to lower
/// case (ASCII only, as the server does for UTF-8), quoted names with quotes stripped and `""`
/// unescaped; truncated to `NAMEDATALEN - 1` bytes at a character boundary. The result lives
/// in `buf`, so nothing is allocated.
pub fn fold_ident<'b>(text: &str, buf: &'b mut [u8; NAMEDATALEN]) -> &'b str {
    let limit = NAMEDATALEN - 1;
    let mut n = 0;
    if let Some(inner) = quoted_inner(text) {
        let mut chars = inner.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c == '"' && matches!(chars.peek(), Some((_, '"'))) {
                chars.next();
            }
            let len = c.len_utf8();
            if n + len > limit {
                break;
            }
            c.encode_utf8(&mut buf[n..n + len]);
            n += len;
        }
    } else {
        // ASCII lower-casing keeps UTF-8 intact; cut at a character boundary.
        n = text.len();
        if n > limit {
            n = limit;
            while !text.is_char_boundary(n) {
                n -= 1;
            }
        }
        for (d, s) in buf[..n].iter_mut().zip(text.bytes()) {
            *d = s.to_ascii_lowercase();
        }
    }
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// The inside of `"…"` / `U&"…"` (escapes untouched), or `None` for an unquoted name.
fn quoted_inner(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let rest = if let Some(rest) = text.strip_prefix('"') {
        rest
    } else if b.len() >= 3 && b[1] == b'&' && b[2] == b'"' {
        text.get(3..)?
    } else {
        return None;
    };
    // A terminated quoted identifier ends with a `"` that is not half of a `""` escape; an
    // unterminated one runs to the end. Strip one closing quote when the count says so.
    let quotes = rest.bytes().filter(|&b| b == b'"').count();
    if quotes % 2 == 1 {
        Some(rest.strip_suffix('"').unwrap_or(rest))
    } else {
        Some(rest)
    }
}

const IDENT_START: u8 = 1;
const IDENT_CONT: u8 = 2;
const OP: u8 = 4;
const SPACE: u8 = 8;

/// Character classes of every byte value (bytes >= 0x80 belong to identifiers, as in the
/// server's lexer).
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            t[i] = IDENT_START | IDENT_CONT;
        } else if b.is_ascii_digit() || b == b'$' {
            t[i] = IDENT_CONT;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            t[i] = SPACE;
        }
        if matches!(
            b,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
        ) {
            t[i] = OP;
        }
        i += 1;
    }
    t
};

#[inline]
fn is_ident_start(b: u8) -> bool {
    CLASS[b as usize] & IDENT_START != 0
}

#[inline]
fn is_ident_cont(b: u8) -> bool {
    CLASS[b as usize] & IDENT_CONT != 0
}

#[inline]
fn is_op_char(b: u8) -> bool {
    CLASS[b as usize] & OP != 0
}

#[inline]
fn is_space(b: u8) -> bool {
    CLASS[b as usize] & SPACE != 0
}

/// Iterates over the tokens of SQL text, skipping whitespace and comments.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    /// Byte offset of the next unread character.
    pub fn offset(&self) -> usize {
        self.pos
    }

    #[inline]
    fn at(&self, i: usize) -> u8 {
        self.src.as_bytes().get(i).copied().unwrap_or(0)
    }

    fn token(
        &mut self,
        kind: TokenKind,
        start: usize,
        end: usize,
        unterminated: bool,
    ) -> Token<'a> {
        let end = end.min(self.src.len());
        self.pos = end;
        Token {
            kind,
            text: self.src.get(start..end).unwrap_or(""),
            start,
            unterminated,
        }
    }

    /// Skips whitespace and complete comments. Returns the start of an unterminated block
    /// comment, if one ends the input.
    fn skip_blank(&mut self) -> Option<usize> {
        let b = self.src.as_bytes();
        let len = b.len();
        loop {
            while self.pos < len && is_space(b[self.pos]) {
                self.pos += 1;
            }
            if self.pos + 1 >= len {
                return None;
            }
            if b[self.pos] == b'-' && b[self.pos + 1] == b'-' {
                while self.pos < len && b[self.pos] != b'\n' && b[self.pos] != b'\r' {
                    self.pos += 1;
                }
            } else if b[self.pos] == b'/' && b[self.pos + 1] == b'*' {
                let start = self.pos;
                let mut depth = 1u32;
                self.pos += 2;
                while depth > 0 {
                    if self.pos + 1 >= len {
                        self.pos = len;
                        return Some(start);
                    }
                    if b[self.pos] == b'*' && b[self.pos + 1] == b'/' {
                        depth -= 1;
                        self.pos += 2;
                    } else if b[self.pos] == b'/' && b[self.pos + 1] == b'*' {
                        depth += 1;
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                    }
                }
            } else {
                return None;
            }
        }
    }

    /// A `'…'` string whose opening quote is at `quote`; `backslash` enables `\` escapes.
    fn quoted_string(&mut self, start: usize, quote: usize, backslash: bool) -> Token<'a> {
        let b = self.src.as_bytes();
        let mut i = quote + 1;
        while i < b.len() {
            match b[i] {
                b'\'' if self.at(i + 1) == b'\'' => i += 2,
                b'\'' => return self.token(TokenKind::String, start, i + 1, false),
                b'\\' if backslash => i += 2,
                _ => i += 1,
            }
        }
        self.token(TokenKind::String, start, b.len(), true)
    }

    fn quoted_ident(&mut self, start: usize, quote: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        let mut i = quote + 1;
        while i < b.len() {
            if b[i] == b'"' {
                if self.at(i + 1) == b'"' {
                    i += 2;
                    continue;
                }
                return self.token(TokenKind::QuotedIdent, start, i + 1, false);
            }
            i += 1;
        }
        self.token(TokenKind::QuotedIdent, start, b.len(), true)
    }

    /// At a `$`: a parameter, a dollar-quoted string, or a stray `$`.
    fn dollar(&mut self, start: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        if self.at(start + 1).is_ascii_digit() {
            let mut i = start + 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            return self.token(TokenKind::Param, start, i, false);
        }
        let mut i = start + 1;
        if i < b.len() && is_ident_start(b[i]) {
            i += 1;
            while i < b.len() && is_ident_cont(b[i]) && b[i] != b'$' {
                i += 1;
            }
        }
        if self.at(i) != b'$' {
            return self.token(TokenKind::Unknown, start, start + 1, false);
        }
        let body = i + 1;
        let delim = &self.src[start..body];
        match self.src[body..].find(delim) {
            Some(at) => self.token(TokenKind::String, start, body + at + delim.len(), false),
            None => self.token(TokenKind::String, start, b.len(), true),
        }
    }

    fn number(&mut self, start: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        let mut i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if self.at(i) == b'.' && self.at(i + 1) != b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if matches!(self.at(i), b'e' | b'E') {
            let sign = usize::from(matches!(self.at(i + 1), b'+' | b'-'));
            if self.at(i + 1 + sign).is_ascii_digit() {
                i += 1 + sign;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
        self.token(TokenKind::Number, start, i, false)
    }

    fn ident(&mut self, start: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        let c = b[start];
        let next = self.at(start + 1);
        if next == b'\'' {
            match c {
                b'e' | b'E' => return self.quoted_string(start, start + 1, true),
                b'b' | b'B' | b'x' | b'X' | b'n' | b'N' => {
                    return self.quoted_string(start, start + 1, false)
                }
                _ => {}
            }
        }
        if matches!(c, b'u' | b'U') && next == b'&' {
            match self.at(start + 2) {
                b'\'' => return self.quoted_string(start, start + 2, false),
                b'"' => return self.quoted_ident(start, start + 2),
                _ => {}
            }
        }
        let mut i = start + 1;
        while i < b.len() && is_ident_cont(b[i]) {
            i += 1;
        }
        self.token(TokenKind::Ident, start, i, false)
    }

    fn operator(&mut self, start: usize) -> Token<'a> {
        let b = self.src.as_bytes();
        let mut i = start;
        while i < b.len() && is_op_char(b[i]) {
            if i > start
                && ((b[i] == b'-' && self.at(i + 1) == b'-')
                    || (b[i] == b'/' && self.at(i + 1) == b'*'))
            {
                break;
            }
            i += 1;
        }
        self.token(TokenKind::Operator, start, i.max(start + 1), false)
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        if let Some(start) = self.skip_blank() {
            return Some(self.token(TokenKind::Comment, start, self.src.len(), true));
        }
        let start = self.pos;
        let c = *self.src.as_bytes().get(start)?;
        Some(match c {
            b'\'' => self.quoted_string(start, start, false),
            b'"' => self.quoted_ident(start, start),
            b'$' => self.dollar(start),
            b'0'..=b'9' => self.number(start),
            b'.' if self.at(start + 1).is_ascii_digit() => self.number(start),
            b'(' | b')' | b'[' | b']' | b',' | b';' | b'.' => {
                self.token(TokenKind::Punct(c), start, start + 1, false)
            }
            b':' if self.at(start + 1) == b':' => {
                self.token(TokenKind::Cast, start, start + 2, false)
            }
            b':' => self.token(TokenKind::Punct(b':'), start, start + 1, false),
            _ if is_ident_start(c) => self.ident(start),
            _ if is_op_char(c) => self.operator(start),
            // Only ASCII bytes get here (bytes >= 0x80 start identifiers), so one byte is
            // one character.
            _ => self.token(TokenKind::Unknown, start, start + 1, false),
        })
    }
}

/// A possibly qualified name (`schema.table`) starting at `tokens[at]`: as written (quotes
/// kept), folded as PostgreSQL resolves it, its last part as written, and the index of the
/// token after it. None if no name starts there.
pub fn qualified_name<'a>(
    tokens: &[Token<'a>],
    at: usize,
) -> Option<(String, String, &'a str, usize)> {
    let (mut written, mut folded) = (String::new(), String::new());
    let mut i = at;
    loop {
        let t = tokens.get(i).filter(|t| t.is_name())?;
        written.push_str(t.text);
        let mut buf = [0u8; NAMEDATALEN];
        folded.push_str(fold_ident(t.text, &mut buf));
        i += 1;
        if !tokens.get(i).is_some_and(|t| t.is_punct(b'.')) {
            return Some((written, folded, t.text, i));
        }
        written.push('.');
        folded.push('.');
        i += 1;
    }
}

/// What keeps a `;` from ending a statement: parentheses and the `BEGIN ATOMIC … END` body of
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE` (where `CASE … END` nests too). Feed it every token
/// of a statement in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nesting {
    paren: u32,
    atomic: u32,
    tokens: u8,
    routine: Routine,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Routine {
    #[default]
    Maybe,
    Yes,
    No,
}

impl Nesting {
    /// Accounts for `tok`; true when it is a `;` that ends the statement.
    pub fn feed(&mut self, tok: &Token<'_>) -> bool {
        if self.routine == Routine::Maybe {
            let i = self.tokens;
            self.tokens = self.tokens.saturating_add(1);
            let is_routine = |t: &Token<'_>| t.is_kw("function") || t.is_kw("procedure");
            self.routine = match i {
                0 if tok.is_kw("create") => Routine::Maybe,
                1 if is_routine(tok) => Routine::Yes,
                1 if tok.is_kw("or") => Routine::Maybe,
                2 if tok.is_kw("replace") => Routine::Maybe,
                3 if is_routine(tok) => Routine::Yes,
                _ => Routine::No,
            };
        }
        match tok.kind {
            TokenKind::Punct(b'(') => self.paren = self.paren.saturating_add(1),
            TokenKind::Punct(b')') => self.paren = self.paren.saturating_sub(1),
            TokenKind::Punct(b';') if self.paren == 0 && self.atomic == 0 => {
                *self = Nesting::default();
                return true;
            }
            TokenKind::Ident if self.routine == Routine::Yes && self.paren == 0 => {
                if tok.is_kw("begin") {
                    self.atomic = self.atomic.saturating_add(1);
                } else if tok.is_kw("case") && self.atomic > 0 {
                    self.atomic += 1;
                } else if tok.is_kw("end") {
                    self.atomic = self.atomic.saturating_sub(1);
                }
            }
            _ => {}
        }
        false
    }

    /// Current parenthesis depth (unbalanced `)` saturate at 0).
    pub fn depth(&self) -> u32 {
        self.paren
    }
}

/// Splits a query string at top-level `;` (not inside quotes, dollar quotes, comments,
/// parentheses or `BEGIN ATOMIC` bodies). Each statement is trimmed of whitespace (comments
/// are kept); statements without any token are dropped.
pub fn split_statements(sql: &str) -> Statements<'_> {
    Statements {
        src: sql,
        lexer: Lexer::new(sql),
    }
}

/// Iterator returned by [`split_statements`].
#[derive(Debug, Clone)]
pub struct Statements<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let region = self.lexer.offset();
            let mut nesting = Nesting::default();
            let mut any = false;
            let mut end = None;
            for tok in self.lexer.by_ref() {
                if nesting.feed(&tok) {
                    end = Some(tok.start);
                    break;
                }
                any = true;
            }
            let stop = match end {
                Some(e) => e,
                None => self.src.len(),
            };
            if any {
                let text = self.src.get(region..stop).unwrap_or("");
                return Some(text.trim_matches(|c: char| {
                    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
                }));
            }
            end?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        Lexer::new(sql).map(|t| (t.kind, t.text)).collect()
    }

    fn split(sql: &str) -> Vec<&str> {
        split_statements(sql).collect()
    }

    #[test]
    fn identifiers_and_keywords() {
        use TokenKind::*;
        assert_eq!(
            kinds("SELECT a$1, _b, été FROM \"T\"\"x\" u&\"d\\0061t\""),
            vec![
                (Ident, "SELECT"),
                (Ident, "a$1"),
                (Punct(b','), ","),
                (Ident, "_b"),
                (Punct(b','), ","),
                (Ident, "été"),
                (Ident, "FROM"),
                (QuotedIdent, "\"T\"\"x\""),
                (QuotedIdent, "u&\"d\\0061t\""),
            ]
        );
        let t = Lexer::new("SeLeCt").next().unwrap();
        assert!(t.is_kw("select"));
        assert!(!t.is_kw("selec"));
        let q = Lexer::new("\"select\"").next().unwrap();
        assert!(!q.is_kw("select"));
    }

    #[test]
    fn fold_identifiers() {
        let mut buf = [0u8; NAMEDATALEN];
        assert_eq!(fold_ident("NextVal", &mut buf), "nextval");
        assert_eq!(fold_ident("\"NextVal\"", &mut buf), "NextVal");
        assert_eq!(fold_ident("\"a\"\"b\"", &mut buf), "a\"b");
        assert_eq!(fold_ident("U&\"x\"", &mut buf), "x");
        assert_eq!(fold_ident("\"unterminated", &mut buf), "unterminated");
        assert_eq!(fold_ident("\"a\"\"", &mut buf), "a\"");
        assert_eq!(fold_ident("ÉtÉ", &mut buf), "ÉtÉ");
        assert_eq!(fold_ident("\"a\"é", &mut buf), "a\"é");
        let long = "é".repeat(40);
        let folded = fold_ident(&long, &mut buf);
        assert_eq!(folded.len(), 62);
    }

    #[test]
    fn strings() {
        use TokenKind::*;
        assert_eq!(
            kinds("'it''s' E'a\\'b' B'01' X'ff' N'n' U&'u' e'\\\\'"),
            vec![
                (String, "'it''s'"),
                (String, "E'a\\'b'"),
                (String, "B'01'"),
                (String, "X'ff'"),
                (String, "N'n'"),
                (String, "U&'u'"),
                (String, "e'\\\\'"),
            ]
        );
        // A backslash is an ordinary character in a standard string.
        assert_eq!(kinds("'a\\' x"), vec![(String, "'a\\'"), (Ident, "x")]);
        let t = Lexer::new("E'now'").next().unwrap();
        assert_eq!(t.string_body(), "now");
        let t = Lexer::new("$x$ a;b $x$").next().unwrap();
        assert_eq!(t.string_body(), " a;b ");
        let t = Lexer::new("'abc").next().unwrap();
        assert!(t.unterminated);
        assert_eq!(t.string_body(), "abc");
    }

    #[test]
    fn dollar_quotes_and_params() {
        use TokenKind::*;
        assert_eq!(
            kinds("$1 $$a$b$$ $tag$ $$ ; $tag$ $a$$a$ $12x"),
            vec![
                (Param, "$1"),
                (String, "$$a$b$$"),
                (String, "$tag$ $$ ; $tag$"),
                (String, "$a$$a$"),
                (Param, "$12"),
                (Ident, "x"),
            ]
        );
        assert_eq!(kinds("a$$b"), vec![(Ident, "a$$b")]);
        let toks: Vec<_> = Lexer::new("$q$ never closed $Q$").collect();
        assert_eq!(toks.len(), 1);
        assert!(toks[0].unterminated);
        assert_eq!(kinds("$ x"), vec![(Unknown, "$"), (Ident, "x")]);
    }

    #[test]
    fn numbers_operators_punctuation() {
        use TokenKind::*;
        assert_eq!(
            kinds("1 1.5 .5 1e10 2.5E-3 1..2 a::int <>= -1 a.b[1:2]"),
            vec![
                (Number, "1"),
                (Number, "1.5"),
                (Number, ".5"),
                (Number, "1e10"),
                (Number, "2.5E-3"),
                (Number, "1"),
                (Punct(b'.'), "."),
                (Number, ".2"),
                (Ident, "a"),
                (Cast, "::"),
                (Ident, "int"),
                (Operator, "<>="),
                (Operator, "-"),
                (Number, "1"),
                (Ident, "a"),
                (Punct(b'.'), "."),
                (Ident, "b"),
                (Punct(b'['), "["),
                (Number, "1"),
                (Punct(b':'), ":"),
                (Number, "2"),
                (Punct(b']'), "]"),
            ]
        );
        // An operator never swallows a comment start.
        assert_eq!(
            kinds("a +-- c\n b"),
            vec![(Ident, "a"), (Operator, "+"), (Ident, "b")]
        );
        assert_eq!(
            kinds("a */* c */ b"),
            vec![(Ident, "a"), (Operator, "*"), (Ident, "b")]
        );
    }

    #[test]
    fn comments() {
        use TokenKind::*;
        assert_eq!(
            kinds("-- x\nselect /* a /* nested */ still */ 1 -- end"),
            vec![(Ident, "select"), (Number, "1")]
        );
        let toks: Vec<_> = Lexer::new("select /* open /* */").collect();
        assert_eq!(toks.len(), 2);
        assert_eq!(toks[1].kind, Comment);
        assert!(toks[1].unterminated);
        assert!(kinds("  \n\t ").is_empty());
        assert!(kinds("").is_empty());
        assert_eq!(kinds("/"), vec![(Operator, "/")]);
        assert_eq!(kinds("-"), vec![(Operator, "-")]);
    }

    #[test]
    fn token_positions() {
        let sql = "  select  'x' ;";
        for t in Lexer::new(sql) {
            assert_eq!(&sql[t.start..t.end()], t.text);
        }
    }

    #[test]
    fn split_basic() {
        assert_eq!(
            split("BEGIN; UPDATE t SET a=1; SELECT 1; COMMIT;"),
            vec!["BEGIN", "UPDATE t SET a=1", "SELECT 1", "COMMIT"]
        );
        assert_eq!(split(" ; ;; -- c\n ; /* x */ "), Vec::<&str>::new());
        assert_eq!(split("select 1"), vec!["select 1"]);
        assert_eq!(
            split("/* hint */ select 1 -- tail\n; select 2"),
            vec!["/* hint */ select 1 -- tail", "select 2"]
        );
    }

    #[test]
    fn split_keeps_hidden_semicolons() {
        assert_eq!(
            split("select ';', $$;$$, \";\", E'\\';' /* ; */ -- ;\n; select (1;2)"),
            vec![
                "select ';', $$;$$, \";\", E'\\';' /* ; */ -- ;",
                "select (1;2)"
            ]
        );
        let f = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN x := 1; RETURN x; END $body$ LANGUAGE plpgsql";
        assert_eq!(split(&format!("{f}; select f();")), vec![f, "select f()"]);
        let atomic =
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); \
                      SELECT CASE WHEN true THEN 1 ELSE 2 END; END";
        assert_eq!(
            split(&format!("{atomic};CALL p()")),
            vec![atomic, "CALL p()"]
        );
        // BEGIN outside a routine definition is a transaction start.
        assert_eq!(split("begin; end;"), vec!["begin", "end"]);
        // Unbalanced parentheses keep the rest in one statement; unterminated quotes too.
        assert_eq!(split("select (1; select 2"), vec!["select (1; select 2"]);
        assert_eq!(
            split("select 1; select 'x; y"),
            vec!["select 1", "select 'x; y"]
        );
        assert_eq!(split("select 1) ; select 2"), vec!["select 1)", "select 2"]);
    }
}
