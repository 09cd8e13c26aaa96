//! Channel patterns with a `*` wildcard, as used by `[[channels]]` rules and token `channels`.

use std::fmt;

/// A glob over channel names where `*` matches any run of characters (also none).
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// A pattern from its text.
    pub fn new(text: &str) -> Self {
        Self(text.into())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        // `split` always yields at least one part.
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn wildcards() {
        let m = |p: &str, n: &str| Pattern::new(p).matches(n);
        assert!(m("chat", "chat"));
        assert!(!m("chat", "chats"));
        assert!(m("chat:*", "chat:"));
        assert!(m("chat:*", "chat:42"));
        assert!(!m("chat:*", "game:42"));
        assert!(m("*", "anything"));
        assert!(m("*:42", "game:42"));
        assert!(m("a*b*c", "a-x-b-y-c"));
        assert!(!m("a*b*c", "a-x-c-y-b"));
        assert!(!m("ab*ba", "aba"));
    }
}
