//! `SubjectTrie`: the subject index, one level per token with dedicated slots for `*` and `>`.
//!
//! Owns the pattern -> values map of one core's shard (values are that core's local
//! subscriptions). Core-local and single-threaded: only the core thread that owns it touches it,
//! so it needs no lock. The same structure answers permission checks (issue 4).
//!
//! Matching a concrete subject walks at most `tokens x (1 + wildcard slots)` nodes; callers cache
//! the result per subject (see [`crate::core::fanout::MatchCache`]).

use hashbrown::HashMap;

/// Values kept with exact capacity up to this many per node: most patterns have one or a few
/// subscribers, and a `Vec`'s first growth reserves four slots; past it, normal doubling.
const VALUES_EXACT_MAX: usize = 4;

/// Literal children kept in a list, scanned in order, up to this many per level: most levels
/// of a subject space have one or a few children, and a hash map's smallest table (four
/// buckets plus a control group, ~200 bytes here) costs four times a one-entry list. Past it,
/// a hash map. Eight string compares per level is what a cache miss of the match walk pays.
const LITERAL_LIST_MAX: usize = 8;

/// One trie node: values of patterns that end here, and the level below.
struct Node<V> {
    values: Vec<V>,
    next: Option<Box<Level<V>>>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            values: Vec::new(),
            next: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.next.as_ref().is_none_or(|l| l.is_empty())
    }

    fn push(&mut self, value: V) {
        if self.values.len() < VALUES_EXACT_MAX {
            self.values.reserve_exact(1);
        }
        self.values.push(value);
    }
}

/// The literal children of one level: a short list while small, a hash map past
/// [`LITERAL_LIST_MAX`].
enum Literals<V> {
    List(Vec<(Box<str>, Node<V>)>),
    /// Boxed: keeps every level, most of which are lists, at the size of a list.
    Map(Box<HashMap<Box<str>, Node<V>>>),
}

impl<V> Literals<V> {
    fn is_empty(&self) -> bool {
        match self {
            Literals::List(l) => l.is_empty(),
            Literals::Map(m) => m.is_empty(),
        }
    }

    fn get(&self, tok: &str) -> Option<&Node<V>> {
        match self {
            Literals::List(l) => l.iter().find(|(t, _)| &**t == tok).map(|(_, n)| n),
            Literals::Map(m) => m.get(tok),
        }
    }

    fn get_mut(&mut self, tok: &str) -> Option<&mut Node<V>> {
        match self {
            Literals::List(l) => l.iter_mut().find(|(t, _)| &**t == tok).map(|(_, n)| n),
            Literals::Map(m) => m.get_mut(tok),
        }
    }

    /// The child under `tok`, created if missing.
    fn entry(&mut self, tok: &str) -> &mut Node<V> {
        if let Literals::List(l) = self {
            if !l.iter().any(|(t, _)| &**t == tok) && l.len() == LITERAL_LIST_MAX {
                *self = Literals::Map(Box::new(std::mem::take(l).into_iter().collect()));
            }
        }
        match self {
            Literals::List(l) => {
                let i = match l.iter().position(|(t, _)| &**t == tok) {
                    Some(i) => i,
                    None => {
                        l.reserve_exact(1);
                        l.push((tok.into(), Node::default()));
                        l.len() - 1
                    }
                };
                &mut l[i].1
            }
            Literals::Map(m) => m.entry_ref(tok).or_default(),
        }
    }

    fn remove(&mut self, tok: &str) {
        match self {
            Literals::List(l) => {
                if let Some(i) = l.iter().position(|(t, _)| &**t == tok) {
                    l.swap_remove(i);
                    l.shrink_to_fit();
                }
            }
            Literals::Map(m) => {
                m.remove(tok);
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&str, &Node<V>)) {
        match self {
            Literals::List(l) => l.iter().for_each(|(t, n)| f(t, n)),
            Literals::Map(m) => m.iter().for_each(|(t, n)| f(t, n)),
        }
    }
}

/// One level of the trie: literal tokens, plus the `*` (pwc) and `>` (fwc) slots.
struct Level<V> {
    literal: Literals<V>,
    pwc: Option<Box<Node<V>>>,
    fwc: Option<Box<Node<V>>>,
}

impl<V> Default for Level<V> {
    fn default() -> Self {
        Level {
            literal: Literals::List(Vec::new()),
            pwc: None,
            fwc: None,
        }
    }
}

impl<V> Level<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }
}

/// Pattern index: insert/remove values under patterns, match concrete subjects.
pub struct SubjectTrie<V> {
    root: Level<V>,
    len: usize,
}

impl<V> Default for SubjectTrie<V> {
    fn default() -> Self {
        SubjectTrie {
            root: Level::default(),
            len: 0,
        }
    }
}

impl<V: PartialEq> SubjectTrie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under the (valid) `pattern`.
    pub fn insert(&mut self, pattern: &str, value: V) {
        let mut level = &mut self.root;
        let mut tokens = pattern.split('.').peekable();
        loop {
            let tok = tokens.next().expect("pattern has at least one token");
            let node: &mut Node<V> = match tok {
                "*" => level.pwc.get_or_insert_with(Default::default),
                ">" => level.fwc.get_or_insert_with(Default::default),
                t => level.literal.entry(t),
            };
            if tokens.peek().is_none() {
                node.push(value);
                self.len += 1;
                return;
            }
            level = node.next.get_or_insert_with(Default::default);
        }
    }

    /// Removes the first entry under `pattern` equal to `value`; true if one was removed.
    pub fn remove(&mut self, pattern: &str, value: &V) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_in(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(level: &mut Level<V>, tokens: &[&str], value: &V) -> bool {
        let (tok, rest) = match tokens.split_first() {
            Some(x) => x,
            None => return false,
        };
        let removed;
        let empty;
        {
            let node = match *tok {
                "*" => level.pwc.as_deref_mut(),
                ">" => level.fwc.as_deref_mut(),
                t => level.literal.get_mut(t),
            };
            let Some(node) = node else { return false };
            if rest.is_empty() {
                match node.values.iter().position(|v| v == value) {
                    Some(i) => {
                        node.values.swap_remove(i);
                        removed = true;
                    }
                    None => removed = false,
                }
            } else {
                let Some(next) = node.next.as_deref_mut() else {
                    return false;
                };
                removed = Self::remove_in(next, rest, value);
                if next.is_empty() {
                    node.next = None;
                }
            }
            empty = node.is_empty();
        }
        if empty {
            match *tok {
                "*" => level.pwc = None,
                ">" => level.fwc = None,
                t => {
                    level.literal.remove(t);
                }
            }
        }
        removed
    }

    /// Calls `f` for every value whose pattern matches the concrete `subject`.
    /// A value stored under several matching patterns is reported once per pattern.
    pub fn for_each_match(&self, subject: &str, mut f: impl FnMut(&V)) {
        let tokens: smallvec_tokens::Tokens<'_> = smallvec_tokens::split(subject);
        Self::match_level(&self.root, tokens.as_slice(), &mut f);
    }

    fn match_level(level: &Level<V>, tokens: &[&str], f: &mut impl FnMut(&V)) {
        let Some((tok, rest)) = tokens.split_first() else {
            return;
        };
        if let Some(fwc) = &level.fwc {
            fwc.values.iter().for_each(&mut *f);
        }
        if let Some(pwc) = &level.pwc {
            Self::match_node(pwc, rest, f);
        }
        if let Some(node) = level.literal.get(tok) {
            Self::match_node(node, rest, f);
        }
    }

    fn match_node(node: &Node<V>, rest: &[&str], f: &mut impl FnMut(&V)) {
        if rest.is_empty() {
            node.values.iter().for_each(&mut *f);
        } else if let Some(next) = &node.next {
            Self::match_level(next, rest, f);
        }
    }

    /// Calls `f` for every (pattern, value) entry. Cold path (diagnostics, shutdown).
    pub fn for_each_entry(&self, mut f: impl FnMut(&str, &V)) {
        let mut prefix = String::new();
        Self::walk(&self.root, &mut prefix, &mut f);
    }

    fn walk(level: &Level<V>, prefix: &mut String, f: &mut dyn FnMut(&str, &V)) {
        level
            .literal
            .for_each(|tok, node| Self::visit(tok, node, prefix, f));
        if let Some(n) = &level.pwc {
            Self::visit("*", n, prefix, f);
        }
        if let Some(n) = &level.fwc {
            Self::visit(">", n, prefix, f);
        }
    }

    fn visit(tok: &str, node: &Node<V>, prefix: &mut String, f: &mut dyn FnMut(&str, &V)) {
        let len = prefix.len();
        if len > 0 {
            prefix.push('.');
        }
        prefix.push_str(tok);
        for v in &node.values {
            f(prefix, v);
        }
        if let Some(next) = &node.next {
            Self::walk(next, prefix, f);
        }
        prefix.truncate(len);
    }
}

/// Splitting a subject into tokens without a heap allocation for the common case.
mod smallvec_tokens {
    use crate::subject::MAX_TOKENS;

    /// Up to [`MAX_TOKENS`] borrowed tokens on the stack.
    pub(super) struct Tokens<'a> {
        buf: [&'a str; MAX_TOKENS],
        len: usize,
    }

    impl<'a> Tokens<'a> {
        pub(super) fn as_slice(&self) -> &[&'a str] {
            &self.buf[..self.len]
        }
    }

    /// Splits a valid subject; extra tokens beyond the protocol limit are ignored (the subject
    /// was validated before it reached the trie).
    pub(super) fn split(subject: &str) -> Tokens<'_> {
        let mut t = Tokens {
            buf: [""; MAX_TOKENS],
            len: 0,
        };
        for tok in subject.split('.').take(MAX_TOKENS) {
            t.buf[t.len] = tok;
            t.len += 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(t: &SubjectTrie<u32>, s: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.for_each_match(s, |x| v.push(*x));
        v.sort();
        v
    }

    #[test]
    fn literal_star_and_full_wildcards_match_as_specified() {
        let mut t = SubjectTrie::new();
        t.insert("prices.EURUSD", 1);
        t.insert("prices.*", 2);
        t.insert("prices.>", 3);
        t.insert("*.EURUSD", 4);
        t.insert(">", 5);
        t.insert("prices.*.bid", 6);
        assert_eq!(matched(&t, "prices.EURUSD"), vec![1, 2, 3, 4, 5]);
        assert_eq!(matched(&t, "prices.EURUSD.bid"), vec![3, 5, 6]);
        assert_eq!(matched(&t, "prices"), vec![5]);
        assert_eq!(matched(&t, "news.EURUSD"), vec![4, 5]);
        assert_eq!(matched(&t, "news.GBPUSD"), vec![5]);
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn a_value_under_two_matching_patterns_is_reported_twice() {
        let mut t = SubjectTrie::new();
        t.insert("a.*", 7);
        t.insert("a.>", 7);
        assert_eq!(matched(&t, "a.b"), vec![7, 7]);
    }

    #[test]
    fn remove_prunes_and_only_removes_the_given_value() {
        let mut t = SubjectTrie::new();
        t.insert("a.b.c", 1);
        t.insert("a.b.c", 2);
        t.insert("a.*.c", 3);
        assert!(t.remove("a.b.c", &1));
        assert!(!t.remove("a.b.c", &1));
        assert!(!t.remove("a.b", &2));
        assert_eq!(matched(&t, "a.b.c"), vec![2, 3]);
        assert!(t.remove("a.b.c", &2));
        assert!(t.remove("a.*.c", &3));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty levels are pruned");
    }

    #[test]
    fn a_level_past_its_list_size_becomes_a_map_and_still_matches() {
        let mut t = SubjectTrie::new();
        let n = LITERAL_LIST_MAX as u32 * 3;
        for i in 0..n {
            t.insert(&format!("a.t{i}"), i);
        }
        for i in 0..n {
            assert_eq!(matched(&t, &format!("a.t{i}")), vec![i]);
        }
        for i in 0..n {
            assert!(t.remove(&format!("a.t{i}"), &i));
        }
        assert!(t.root.is_empty());
    }

    #[test]
    fn entries_can_be_listed_with_their_patterns() {
        let mut t = SubjectTrie::new();
        t.insert("a.b", 1);
        t.insert("a.>", 2);
        t.insert("*", 3);
        let mut all = Vec::new();
        t.for_each_entry(|p, v| all.push((p.to_string(), *v)));
        all.sort();
        assert_eq!(
            all,
            vec![("*".into(), 3), ("a.>".into(), 2), ("a.b".into(), 1)]
        );
    }
}
