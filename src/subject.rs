//! Subject and pattern syntax: validation, tokenising, matching and coverage.
//!
//! Owns nothing; pure functions used by every thread. A subject is `.`-separated tokens of
//! `[A-Za-z0-9_\-:]` (1..=64 bytes each, at most 16 tokens and 256 bytes). A pattern may also use
//! `*` (exactly one token) and `>` (one or more trailing tokens, last position only).

use std::fmt;

/// Longest subject or pattern, in bytes (PROTOCOL.md).
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Most tokens in a subject or pattern (PROTOCOL.md).
pub const MAX_TOKENS: usize = 16;
/// Longest single token, in bytes (PROTOCOL.md).
pub const MAX_TOKEN_BYTES: usize = 64;

/// Why a subject or pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    /// The string is empty.
    Empty,
    /// More than [`MAX_SUBJECT_BYTES`] bytes.
    TooLong,
    /// More than [`MAX_TOKENS`] tokens.
    TooManyTokens,
    /// Two dots in a row, or a leading/trailing dot.
    EmptyToken,
    /// A token longer than [`MAX_TOKEN_BYTES`].
    TokenTooLong,
    /// A byte outside `[A-Za-z0-9_\-:]` (or a wildcard mixed into a token).
    BadChar,
    /// A wildcard where a concrete subject is required (publish, history, `since`).
    Wildcard,
    /// `>` somewhere other than the last token.
    FullWildcardNotLast,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubjectError::Empty => "subject is empty",
            SubjectError::TooLong => "subject longer than 256 bytes",
            SubjectError::TooManyTokens => "subject has more than 16 tokens",
            SubjectError::EmptyToken => "subject has an empty token",
            SubjectError::TokenTooLong => "subject token longer than 64 bytes",
            SubjectError::BadChar => "subject token has a character outside [A-Za-z0-9_-:]",
            SubjectError::Wildcard => {
                "wildcards are not allowed here; a concrete subject is required"
            }
            SubjectError::FullWildcardNotLast => "'>' may only be the last token",
        })
    }
}

impl std::error::Error for SubjectError {}

#[inline]
fn token_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':'
}

fn validate(s: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_BYTES {
        return Err(SubjectError::TooLong);
    }
    let mut count = 0;
    let mut tokens = s.split('.').peekable();
    while let Some(tok) = tokens.next() {
        count += 1;
        if count > MAX_TOKENS {
            return Err(SubjectError::TooManyTokens);
        }
        match tok {
            "" => return Err(SubjectError::EmptyToken),
            "*" | ">" if !allow_wildcards => return Err(SubjectError::Wildcard),
            "*" => {}
            ">" if tokens.peek().is_some() => return Err(SubjectError::FullWildcardNotLast),
            ">" => {}
            _ => {
                if tok.len() > MAX_TOKEN_BYTES {
                    return Err(SubjectError::TokenTooLong);
                }
                if !tok.bytes().all(token_byte_ok) {
                    return Err(if tok.contains(['*', '>']) && !allow_wildcards {
                        SubjectError::Wildcard
                    } else {
                        SubjectError::BadChar
                    });
                }
            }
        }
    }
    Ok(())
}

/// Checks a concrete subject (no wildcards), as needed for publishing.
pub fn validate_subject(s: &str) -> Result<(), SubjectError> {
    validate(s, false)
}

/// Checks a subscription or permission pattern (`*` and `>` allowed).
pub fn validate_pattern(s: &str) -> Result<(), SubjectError> {
    validate(s, true)
}

/// True when a (valid) pattern contains no wildcard token.
pub fn is_literal(pattern: &str) -> bool {
    !pattern.split('.').any(|t| t == "*" || t == ">")
}

/// Does `pattern` match the concrete `subject`? Both are assumed valid.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut pt = pattern.split('.');
    let mut st = subject.split('.');
    loop {
        match (pt.next(), st.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

/// Is every subject that `inner` can match also matched by `outer`? Both are valid patterns.
///
/// Used for permissions: `prices.>` covers `prices.*` and `prices.a.b`, but `prices.*` does not
/// cover `prices.>` nor does it cover `*.EURUSD`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut ot = outer.split('.');
    let mut it = inner.split('.');
    loop {
        match (ot.next(), it.next()) {
            (None, None) => return true,
            // `>` in outer swallows one or more remaining inner tokens of any kind.
            (Some(">"), Some(_)) => return true,
            // `*` in outer covers any single inner token except `>` (which may span several).
            (Some("*"), Some(i)) if i != ">" => {}
            (Some(o), Some(i)) if o == i && o != "*" && o != ">" => {}
            (Some("*"), Some("*")) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_subjects_are_accepted() {
        for s in [
            "prices",
            "prices.EURUSD",
            "a-b_c:d.0",
            &"x.".repeat(15).add("y"),
        ] {
            assert_eq!(validate_subject(s), Ok(()), "{s}");
        }
    }

    trait Add {
        fn add(self, s: &str) -> String;
    }
    impl Add for String {
        fn add(mut self, s: &str) -> String {
            self.push_str(s);
            self
        }
    }

    #[test]
    fn malformed_subjects_are_refused_with_a_reason() {
        let long_token = "a".repeat(65);
        let too_many = vec!["a"; 17].join(".");
        let too_long = vec!["abcdefghijklmnop"; 16].join(".") + "x";
        let cases: &[(&str, SubjectError)] = &[
            ("", SubjectError::Empty),
            ("a..b", SubjectError::EmptyToken),
            (".a", SubjectError::EmptyToken),
            ("a.", SubjectError::EmptyToken),
            ("a b", SubjectError::BadChar),
            ("prices.é", SubjectError::BadChar),
            (&long_token, SubjectError::TokenTooLong),
            (&too_many, SubjectError::TooManyTokens),
            (&too_long, SubjectError::TooLong),
            ("prices.*", SubjectError::Wildcard),
            ("prices.>", SubjectError::Wildcard),
            ("prices.a*", SubjectError::Wildcard),
        ];
        for (s, e) in cases {
            assert_eq!(validate_subject(s), Err(*e), "{s:?}");
        }
    }

    #[test]
    fn patterns_allow_wildcards_but_full_wildcard_only_last() {
        assert_eq!(validate_pattern("prices.*"), Ok(()));
        assert_eq!(validate_pattern(">"), Ok(()));
        assert_eq!(validate_pattern("*.*.>"), Ok(()));
        assert_eq!(
            validate_pattern("a.>.b"),
            Err(SubjectError::FullWildcardNotLast)
        );
        assert_eq!(validate_pattern("a.b*"), Err(SubjectError::BadChar));
    }

    #[test]
    fn wildcard_table() {
        let table = [
            ("prices.*", "prices.EURUSD", true),
            ("prices.*", "prices.EURUSD.bid", false),
            ("prices.*", "prices", false),
            ("prices.>", "prices.EURUSD", true),
            ("prices.>", "prices.EURUSD.bid", true),
            ("prices.>", "prices", false),
            ("*.EURUSD", "prices.EURUSD", true),
            ("*.EURUSD", "prices.GBPUSD", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("prices.EURUSD", "prices.EURUSD", true),
            ("prices.EURUSD", "prices.EURUSDX", false),
        ];
        for (p, s, want) in table {
            assert_eq!(matches(p, s), want, "{p} vs {s}");
        }
    }

    #[test]
    fn coverage_refuses_wildcard_escalation() {
        assert!(covers("prices.>", "prices.*"));
        assert!(covers("prices.>", "prices.a.>"));
        assert!(covers("prices.*", "prices.EURUSD"));
        assert!(covers("prices.*", "prices.*"));
        assert!(covers(">", "*.x.>"));
        assert!(!covers("prices.*", "prices.>"));
        assert!(!covers("prices.*", "*.EURUSD"));
        assert!(!covers("prices.EURUSD", "prices.*"));
        assert!(!covers("prices.>", "prices"));
        assert!(!covers("prices.>", ">"));
    }
}
