//! Error positions in the client's own text. pgmulti may run another text than the client
//! sent (column defaults written into an INSERT, now() replaced by a literal, hidden
//! RETURNING columns), so the position a node's ErrorResponse gives (field `P`: a 1-based
//! character index) points into that text. psql draws its `LINE 1: …` caret from it over
//! the client's text, so it has to be moved back: the two texts are lexed, their tokens
//! matched (longest common subsequence of token texts), and the position carried over to
//! the same place of the matching token. Run only for an error, and only for texts of
//! bounded size: the matching is quadratic.

use super::lexer::Lexer;

/// Token pairs above this are not matched (a megabyte of table for the matching): the
/// position is then left as the node gave it.
const MAX_PAIRS: usize = 1 << 20;

/// The position in `original` (1-based characters, as ErrorResponse's `P`) of what is at
/// `position` in `rewritten`. None when it cannot be told.
pub fn original_position(original: &str, rewritten: &str, position: usize) -> Option<usize> {
    let at = char_to_byte(rewritten, position.checked_sub(1)?)?;
    let a: Vec<_> = Lexer::new(original).collect();
    let b: Vec<_> = Lexer::new(rewritten).collect();
    if a.is_empty() || b.is_empty() || a.len().saturating_mul(b.len()) > MAX_PAIRS {
        return None;
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let width = b.len() + 1;
    let mut lcs = vec![0u32; (a.len() + 1) * width];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i * width + j] = if a[i].text == b[j].text {
                lcs[(i + 1) * width + j + 1] + 1
            } else {
                lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
            };
        }
    }
    // Walk the matching: for each token of `rewritten`, its partner in `original`, if any.
    let mut partner = vec![None; b.len()];
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].text == b[j].text {
            partner[j] = Some(i);
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    // The first token of `rewritten` that ends past the position, and the first matched
    // token from there on: the position is that far before (or inside) its partner.
    let k = b.iter().position(|t| t.end() > at).unwrap_or(b.len() - 1);
    let byte = match (k..b.len()).find_map(|j| partner[j].map(|i| (i, j))) {
        Some((i, j)) if j == k => a[i].start + (at.saturating_sub(b[j].start)).min(a[i].text.len()),
        Some((i, _)) => a[i].start,
        None => original.len(),
    };
    let byte = floor_char_boundary(original, byte);
    Some(original[..byte].chars().count() + 1)
}

/// The byte offset of the `n`-th character (0-based) of `s`, or its length right after it.
fn char_to_byte(s: &str, n: usize) -> Option<usize> {
    s.char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(s.len()))
        .nth(n)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-based character position of `needle` in `s`.
    fn pos(s: &str, needle: &str) -> usize {
        s[..s.find(needle).unwrap()].chars().count() + 1
    }

    #[test]
    fn a_position_after_written_in_defaults_moves_back() {
        let original = "INSERT INTO guid1(guid_field) VALUES('1111F');";
        let rewritten =
            "INSERT INTO guid1(guid_field, text_field) VALUES('1111F', '2026-12-04 21:00:00+00');";
        assert_eq!(
            original_position(original, rewritten, pos(rewritten, "'1111F'")),
            Some(pos(original, "'1111F'"))
        );
        // Inside a token: the same offset in it.
        assert_eq!(
            original_position(original, rewritten, pos(rewritten, "11F")),
            Some(pos(original, "11F"))
        );
    }

    #[test]
    fn a_position_inside_pgmultis_text_points_at_what_follows_it() {
        let original = "UPDATE t SET a = now() WHERE b = 'é' AND c = 1/0";
        let rewritten =
            "UPDATE t SET a = '2026-12-04 21:00:00+00'::timestamptz WHERE b = 'é' AND c = 1/0 RETURNING t.id";
        assert_eq!(
            original_position(original, rewritten, pos(rewritten, "1/0")),
            Some(pos(original, "1/0"))
        );
        // In the replaced literal: the replaced call's place, or the token after it.
        let p = original_position(original, rewritten, pos(rewritten, "21:00")).unwrap();
        assert!(p <= pos(original, "WHERE"), "{p}");
        // In the hidden RETURNING: the end of the client's text.
        assert_eq!(
            original_position(original, rewritten, pos(rewritten, "RETURNING")),
            Some(original.chars().count() + 1)
        );
    }

    #[test]
    fn nonsense_positions_are_refused_or_kept_inside() {
        assert_eq!(original_position("SELECT 1", "SELECT 1", 0), None);
        assert_eq!(original_position("SELECT 1", "SELECT 1", 99), None);
        assert_eq!(original_position("", "SELECT 1", 1), None);
        assert_eq!(original_position("SELECT 1", "SELECT 1", 9), Some(9));
    }
}
