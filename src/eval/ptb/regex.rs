//! A small regular-expression engine with JFlex semantics, just big enough to
//! express the Stanford `PTBLexer` rules.
//!
//! * The input is a slice of UTF-16 code units, as the Java lexer sees it
//!   (a character outside the Basic Multilingual Plane is two surrogate units
//!   that only negated character classes match).
//! * String literals are matched case-insensitively (ASCII case folding), as
//!   JFlex's `%caseless` does; character classes are case-sensitive, as in
//!   JFlex ("`%caseless` does not expand inside character classes").
//! * Patterns are compiled to a Thompson NFA and simulated breadth-first, so
//!   the longest match of every rule is found without backtracking.

use std::collections::HashMap;
use std::fmt;

/// Unicode categories a character class may include besides explicit ranges.
const CAT_LETTER: u8 = 1;
const CAT_DIGIT: u8 = 2;
const CAT_UPPER: u8 = 4;

/// A character class over UTF-16 code units.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Class {
    negated: bool,
    ranges: Vec<(u16, u16)>,
    cats: u8,
}

impl fmt::Debug for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}", if self.negated { "^" } else { "" })?;
        for &(a, b) in &self.ranges {
            write!(f, "{a:04X}-{b:04X},")?;
        }
        write!(f, "cats={}]", self.cats)
    }
}

/// Java's `Character.isDigit` (general category Nd) for the Basic
/// Multilingual Plane, as of Unicode 6.2 (Java 8).
const ND_RANGES: &[(u16, u16)] = &[
    (0x0030, 0x0039),
    (0x0660, 0x0669),
    (0x06F0, 0x06F9),
    (0x07C0, 0x07C9),
    (0x0966, 0x096F),
    (0x09E6, 0x09EF),
    (0x0A66, 0x0A6F),
    (0x0AE6, 0x0AEF),
    (0x0B66, 0x0B6F),
    (0x0BE6, 0x0BEF),
    (0x0C66, 0x0C6F),
    (0x0CE6, 0x0CEF),
    (0x0D66, 0x0D6F),
    (0x0E50, 0x0E59),
    (0x0ED0, 0x0ED9),
    (0x0F20, 0x0F29),
    (0x1040, 0x1049),
    (0x1090, 0x1099),
    (0x17E0, 0x17E9),
    (0x1810, 0x1819),
    (0x1946, 0x194F),
    (0x19D0, 0x19D9),
    (0x1A80, 0x1A89),
    (0x1A90, 0x1A99),
    (0x1B50, 0x1B59),
    (0x1BB0, 0x1BB9),
    (0x1C40, 0x1C49),
    (0x1C50, 0x1C59),
    (0xA620, 0xA629),
    (0xA8D0, 0xA8D9),
    (0xA900, 0xA909),
    (0xA9D0, 0xA9D9),
    (0xAA50, 0xAA59),
    (0xABF0, 0xABF9),
    (0xFF10, 0xFF19),
];

fn bmp_char(u: u16) -> Option<char> {
    if (0xD800..=0xDFFF).contains(&u) {
        None
    } else {
        char::from_u32(u32::from(u))
    }
}

/// Approximates Java's `Character.isLetter` (categories Lu, Ll, Lt, Lm, Lo):
/// Rust's `Alphabetic` property minus numeric letters (category Nl) and the
/// circled letters U+24B6..U+24E9 (category So).
pub(crate) fn is_letter(u: u16) -> bool {
    if u < 0x80 {
        return (u as u8).is_ascii_alphabetic();
    }
    if (0x24B6..=0x24E9).contains(&u) {
        return false;
    }
    bmp_char(u).is_some_and(|c| c.is_alphabetic() && !c.is_numeric())
}

/// Java's `Character.isDigit` for a UTF-16 unit.
pub(crate) fn is_digit(u: u16) -> bool {
    if u < 0x80 {
        return (u as u8).is_ascii_digit();
    }
    ND_RANGES.iter().any(|&(a, b)| a <= u && u <= b)
}

/// Java's `Character.isUpperCase` for a UTF-16 unit.
pub(crate) fn is_upper(u: u16) -> bool {
    if u < 0x80 {
        return (u as u8).is_ascii_uppercase();
    }
    bmp_char(u).is_some_and(char::is_uppercase)
}

impl Class {
    fn empty() -> Class {
        Class { negated: false, ranges: Vec::new(), cats: 0 }
    }

    /// Parses a class body such as `A-Za-z\u{AD}` (ranges with `-`, a
    /// backslash escapes the next character).
    fn parse(spec: &str, negated: bool) -> Class {
        let chars: Vec<char> = spec.chars().collect();
        let mut ranges = Vec::new();
        let mut i = 0;
        let unit = |c: char| -> u16 { u16::try_from(u32::from(c)).expect("class characters must be in the BMP") };
        while i < chars.len() {
            let mut c = chars[i];
            if c == '\\' {
                i += 1;
                c = chars[i];
            }
            let lo = unit(c);
            if i + 2 < chars.len() && chars[i + 1] == '-' {
                let mut hi_c = chars[i + 2];
                let mut step = 3;
                if hi_c == '\\' {
                    hi_c = chars[i + 3];
                    step = 4;
                }
                ranges.push((lo, unit(hi_c)));
                i += step;
            } else {
                ranges.push((lo, lo));
                i += 1;
            }
        }
        Class { negated, ranges, cats: 0 }
    }

    /// Does the class contain the unit?
    pub(crate) fn contains(&self, u: u16) -> bool {
        let mut hit = self.ranges.iter().any(|&(a, b)| a <= u && u <= b);
        if !hit && self.cats != 0 {
            hit = (self.cats & CAT_LETTER != 0 && is_letter(u))
                || (self.cats & CAT_DIGIT != 0 && is_digit(u))
                || (self.cats & CAT_UPPER != 0 && is_upper(u));
        }
        hit != self.negated
    }
}

/// A regular expression over UTF-16 units.
#[derive(Clone, Debug)]
pub(crate) enum Re {
    /// One unit from a class.
    Class(Class),
    /// Concatenation.
    Seq(Vec<Re>),
    /// Alternation.
    Alt(Vec<Re>),
    /// `inner{min,max}`; `max == None` is unbounded.
    Rep(Box<Re>, u32, Option<u32>),
}

/// A case-insensitive literal string (JFlex `%caseless`).
pub(crate) fn lit(s: &str) -> Re {
    let mut parts = Vec::new();
    for c in s.chars() {
        let u = u16::try_from(u32::from(c)).expect("literal characters must be in the BMP");
        let mut class = Class::empty();
        class.ranges.push((u, u));
        if c.is_ascii_alphabetic() {
            let other = if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() };
            class.ranges.push((other as u16, other as u16));
        }
        parts.push(Re::Class(class));
    }
    if parts.len() == 1 {
        parts.pop().expect("one element")
    } else {
        Re::Seq(parts)
    }
}

/// A case-sensitive character class, e.g. `set("A-Za-z")`.
pub(crate) fn set(spec: &str) -> Re {
    Re::Class(Class::parse(spec, false))
}

/// A negated character class, e.g. `nset(" \t\n")`; matches surrogates too.
pub(crate) fn nset(spec: &str) -> Re {
    Re::Class(Class::parse(spec, true))
}

/// Any unit at all (JFlex `[^]`).
pub(crate) fn any() -> Re {
    Re::Class(Class { negated: true, ranges: Vec::new(), cats: 0 })
}

/// A class of explicit characters plus the given Unicode categories.
fn with_cats(spec: &str, cats: u8) -> Re {
    let mut class = Class::parse(spec, false);
    class.cats = cats;
    Re::Class(class)
}

/// `[:letter:]` plus the characters in `spec`.
pub(crate) fn letter_or(spec: &str) -> Re {
    with_cats(spec, CAT_LETTER)
}

/// `[:letter:]`.
pub(crate) fn letter() -> Re {
    with_cats("", CAT_LETTER)
}

/// `[:digit:]`.
pub(crate) fn digit() -> Re {
    with_cats("", CAT_DIGIT)
}

/// `[:letter:]|[:digit:]`.
pub(crate) fn letter_digit() -> Re {
    with_cats("", CAT_LETTER | CAT_DIGIT)
}

/// `[:uppercase:]`.
pub(crate) fn upper() -> Re {
    with_cats("", CAT_UPPER)
}

impl From<&str> for Re {
    fn from(s: &str) -> Re {
        lit(s)
    }
}

impl Re {
    /// `self*`
    pub(crate) fn star(self) -> Re {
        Re::Rep(Box::new(self), 0, None)
    }
    /// `self+`
    pub(crate) fn plus(self) -> Re {
        Re::Rep(Box::new(self), 1, None)
    }
    /// `self?`
    pub(crate) fn opt(self) -> Re {
        Re::Rep(Box::new(self), 0, Some(1))
    }
    /// `self{min,max}`
    pub(crate) fn rep(self, min: u32, max: u32) -> Re {
        Re::Rep(Box::new(self), min, Some(max))
    }
}

/// Concatenation of regexes (strings become caseless literals).
macro_rules! seq {
    ($($e:expr),+ $(,)?) => { $crate::eval::ptb::regex::Re::Seq(vec![$($crate::eval::ptb::regex::Re::from($e)),+]) };
}
/// Alternation of regexes (strings become caseless literals).
macro_rules! alt {
    ($($e:expr),+ $(,)?) => { $crate::eval::ptb::regex::Re::Alt(vec![$($crate::eval::ptb::regex::Re::from($e)),+]) };
}
pub(crate) use {alt, seq};

/// Alternation of caseless literal words.
pub(crate) fn words(list: &[&str]) -> Re {
    Re::Alt(list.iter().map(|w| lit(w)).collect())
}

#[derive(Clone, Copy, Debug)]
enum Inst {
    /// Consume one unit in class `.0`, go to `.1`.
    Unit(u32, u32),
    /// Epsilon to both.
    Split(u32, u32),
    /// Accept for rule `.0`.
    Match(u32),
}

/// A compiled class: an ASCII bitmap plus the full class for other units.
#[derive(Debug)]
struct CompiledClass {
    ascii: u128,
    class: Class,
}

impl CompiledClass {
    #[inline]
    fn matches(&self, u: u16) -> bool {
        if u < 128 {
            self.ascii >> u & 1 == 1
        } else {
            self.class.contains(u)
        }
    }
}

/// A Thompson NFA for one or more rules; rule `i` accepts with `Match(i)`.
#[derive(Debug)]
pub(crate) struct Nfa {
    insts: Vec<Inst>,
    classes: Vec<CompiledClass>,
    start: u32,
    /// For each ASCII unit, the closed state list after consuming it from
    /// `start` (a precomputed first step; most tokens start with ASCII).
    first_step: Vec<Vec<u32>>,
}

/// Reusable buffers for NFA simulation.
#[derive(Default)]
pub(crate) struct Scratch {
    cur: Vec<u32>,
    next: Vec<u32>,
    stack: Vec<u32>,
    stamp: Vec<u32>,
    generation: u32,
}

impl Nfa {
    /// Compiles the rules; rule `i` is `rules[i]`.
    pub(crate) fn new(rules: &[Re]) -> Nfa {
        let mut b = Builder { insts: Vec::new(), classes: Vec::new() };
        let mut starts = Vec::new();
        for (i, re) in rules.iter().enumerate() {
            let accept = b.push(Inst::Match(i as u32));
            starts.push(b.compile(re, accept));
        }
        let mut start = *starts.last().expect("at least one rule");
        for &s in starts.iter().rev().skip(1) {
            start = b.push(Inst::Split(s, start));
        }
        let classes = b
            .classes
            .into_iter()
            .map(|class| {
                let mut ascii = 0u128;
                for u in 0..128u16 {
                    if class.contains(u) {
                        ascii |= 1 << u;
                    }
                }
                CompiledClass { ascii, class }
            })
            .collect();
        let mut nfa = Nfa { insts: b.insts, classes, start, first_step: Vec::new() };
        let mut scratch = Scratch::default();
        let mut first_step = Vec::with_capacity(128);
        for u in 0..128u16 {
            scratch.reset(nfa.insts.len());
            let mut dummy = MatchRecord::default();
            nfa.add(&mut scratch, nfa.start, 0, &mut dummy, false);
            std::mem::swap(&mut scratch.cur, &mut scratch.next);
            nfa.step(&mut scratch, u, 1, &mut dummy);
            first_step.push(scratch.next.clone());
        }
        nfa.first_step = first_step;
        nfa
    }

    /// Adds the epsilon closure of `s` to `scratch.next`, recording matches
    /// at position `pos`.
    fn add(&self, scratch: &mut Scratch, s: u32, pos: usize, rec: &mut MatchRecord, record: bool) {
        scratch.stack.push(s);
        while let Some(s) = scratch.stack.pop() {
            let idx = s as usize;
            if scratch.stamp[idx] == scratch.generation {
                continue;
            }
            scratch.stamp[idx] = scratch.generation;
            match self.insts[idx] {
                Inst::Unit(..) => scratch.next.push(s),
                Inst::Split(a, b) => {
                    scratch.stack.push(b);
                    scratch.stack.push(a);
                }
                Inst::Match(rule) => {
                    scratch.next.push(s);
                    if record {
                        rec.note(rule, pos);
                    }
                }
            }
        }
    }

    /// Consumes unit `u` from the states in `scratch.cur` into `scratch.next`
    /// (cleared first); matches are recorded at `pos_after`.
    fn step(&self, scratch: &mut Scratch, u: u16, pos_after: usize, rec: &mut MatchRecord) {
        scratch.next.clear();
        scratch.generation = scratch.generation.wrapping_add(1);
        if scratch.generation == 0 {
            scratch.stamp.iter_mut().for_each(|x| *x = u32::MAX);
            scratch.generation = 1;
        }
        let cur = std::mem::take(&mut scratch.cur);
        for &s in &cur {
            if let Inst::Unit(class, next) = self.insts[s as usize] {
                if self.classes[class as usize].matches(u) {
                    self.add(scratch, next, pos_after, rec, true);
                }
            }
        }
        scratch.cur = cur;
    }

    /// Runs the NFA on `units[start..limit]` and calls `rec` for every
    /// (rule, end) pair reached.
    fn run(&self, units: &[u16], start: usize, limit: usize, scratch: &mut Scratch, rec: &mut MatchRecord) {
        scratch.reset(self.insts.len());
        let mut pos = start;
        if pos < limit && units[pos] < 128 {
            // Precomputed first step from the start state; no rule accepts
            // the empty string, so nothing is lost at `start`.
            scratch.cur.clear();
            scratch.cur.extend_from_slice(&self.first_step[units[pos] as usize]);
            pos += 1;
            for &s in &scratch.cur {
                if let Inst::Match(rule) = self.insts[s as usize] {
                    rec.note(rule, pos);
                }
            }
        } else {
            scratch.next.clear();
            self.add(scratch, self.start, pos, rec, true);
            std::mem::swap(&mut scratch.cur, &mut scratch.next);
        }
        while pos < limit && !scratch.cur.is_empty() {
            self.step(scratch, units[pos], pos + 1, rec);
            std::mem::swap(&mut scratch.cur, &mut scratch.next);
            pos += 1;
        }
    }

    /// The longest match of any rule starting at `start`: `(end, rule)`,
    /// ties going to the lowest rule number (JFlex semantics). The lexer uses
    /// [`LazyDfa::longest`], which must agree with this.
    #[cfg(test)]
    pub(crate) fn longest(
        &self,
        units: &[u16],
        start: usize,
        limit: usize,
        scratch: &mut Scratch,
    ) -> Option<(usize, u32)> {
        let mut rec = MatchRecord::default();
        self.run(units, start, limit, scratch, &mut rec);
        rec.best
    }

    /// Every end position at which rule 0 of this NFA matches from `start`.
    pub(crate) fn ends(&self, units: &[u16], start: usize, limit: usize, scratch: &mut Scratch) -> Vec<usize> {
        let mut rec = MatchRecord { all: Some(Vec::new()), ..MatchRecord::default() };
        self.run(units, start, limit, scratch, &mut rec);
        let mut all = rec.all.unwrap_or_default();
        all.dedup();
        all
    }
}

/// Transition-table entry: not computed yet.
const UNKNOWN: u32 = u32::MAX;
/// Transition-table entry / state: no NFA state left.
const DEAD: u32 = u32::MAX - 1;

/// A DFA state: a set of NFA states, the rule it accepts (the
/// lowest-numbered one, JFlex's tie-break), and cached ASCII transitions.
struct DState {
    insts: Box<[u32]>,
    accept: Option<u32>,
    next: Box<[u32; 128]>,
}

/// A lazily built DFA over an [`Nfa`] (subset construction on demand):
/// transitions on ASCII units are cached in tables, others are computed
/// from the NFA each time. Same results as the NFA simulation (tested
/// against it), much faster
/// once warm.
pub(crate) struct LazyDfa<'n> {
    nfa: &'n Nfa,
    states: Vec<DState>,
    index: HashMap<Box<[u32]>, u32>,
    scratch: Scratch,
    start: u32,
}

/// Above this many states the cache is dropped and rebuilt.
const MAX_DFA_STATES: usize = 20_000;

impl<'n> LazyDfa<'n> {
    pub(crate) fn new(nfa: &'n Nfa) -> Self {
        let mut dfa = LazyDfa { nfa, states: Vec::new(), index: HashMap::new(), scratch: Scratch::default(), start: 0 };
        dfa.reset();
        dfa
    }

    fn reset(&mut self) {
        self.states.clear();
        self.index.clear();
        self.scratch.reset(self.nfa.insts.len());
        let mut rec = MatchRecord::default();
        self.nfa.add(&mut self.scratch, self.nfa.start, 0, &mut rec, false);
        let set = std::mem::take(&mut self.scratch.next);
        self.start = self.intern(set);
    }

    /// The DFA state for a set of NFA states (as left in `scratch.next`).
    fn intern(&mut self, mut set: Vec<u32>) -> u32 {
        if set.is_empty() {
            return DEAD;
        }
        set.sort_unstable();
        if let Some(&id) = self.index.get(set.as_slice()) {
            return id;
        }
        let accept = set
            .iter()
            .filter_map(|&s| match self.nfa.insts[s as usize] {
                Inst::Match(rule) => Some(rule),
                _ => None,
            })
            .min();
        let id = self.states.len() as u32;
        let insts: Box<[u32]> = set.into_boxed_slice();
        self.index.insert(insts.clone(), id);
        self.states.push(DState { insts, accept, next: Box::new([UNKNOWN; 128]) });
        id
    }

    /// The state after consuming `u` in state `state`.
    fn step(&mut self, state: u32, u: u16) -> u32 {
        if u < 128 {
            let cached = self.states[state as usize].next[u as usize];
            if cached != UNKNOWN {
                return cached;
            }
        }
        let mut cur = std::mem::take(&mut self.scratch.cur);
        cur.clear();
        cur.extend_from_slice(&self.states[state as usize].insts);
        self.scratch.cur = cur;
        let mut rec = MatchRecord::default();
        self.nfa.step(&mut self.scratch, u, 0, &mut rec);
        let set = std::mem::take(&mut self.scratch.next);
        let next = self.intern(set);
        if u < 128 {
            self.states[state as usize].next[u as usize] = next;
        }
        next
    }

    /// The longest match of any rule starting at `start`: `(end, rule)`,
    /// ties going to the lowest rule number (JFlex semantics).
    pub(crate) fn longest(&mut self, units: &[u16], start: usize, limit: usize) -> Option<(usize, u32)> {
        if self.states.len() > MAX_DFA_STATES {
            self.reset();
        }
        let mut state = self.start;
        let mut best = None;
        let mut pos = start;
        while pos < limit {
            state = self.step(state, units[pos]);
            if state == DEAD {
                break;
            }
            pos += 1;
            if let Some(rule) = self.states[state as usize].accept {
                best = Some((pos, rule));
            }
        }
        best
    }
}

impl Scratch {
    fn reset(&mut self, n: usize) {
        if self.stamp.len() < n {
            self.stamp = vec![0; n];
            self.generation = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamp.iter_mut().for_each(|x| *x = u32::MAX);
            self.generation = 1;
        }
        self.cur.clear();
        self.next.clear();
        self.stack.clear();
    }
}

/// Records the best (longest, then lowest-numbered) match, and optionally
/// all end positions.
#[derive(Default)]
struct MatchRecord {
    best: Option<(usize, u32)>,
    all: Option<Vec<usize>>,
}

impl MatchRecord {
    #[inline]
    fn note(&mut self, rule: u32, pos: usize) {
        self.best = match self.best {
            Some((end, r)) if end > pos || (end == pos && r <= rule) => Some((end, r)),
            _ => Some((pos, rule)),
        };
        if let Some(all) = &mut self.all {
            all.push(pos);
        }
    }
}

struct Builder {
    insts: Vec<Inst>,
    classes: Vec<Class>,
}

impl Builder {
    fn push(&mut self, inst: Inst) -> u32 {
        self.insts.push(inst);
        (self.insts.len() - 1) as u32
    }

    fn class_id(&mut self, class: &Class) -> u32 {
        if let Some(i) = self.classes.iter().position(|c| c == class) {
            return i as u32;
        }
        self.classes.push(class.clone());
        (self.classes.len() - 1) as u32
    }

    /// Compiles `re` so that it continues to state `next`; returns its start.
    fn compile(&mut self, re: &Re, next: u32) -> u32 {
        match re {
            Re::Class(class) => {
                let id = self.class_id(class);
                self.push(Inst::Unit(id, next))
            }
            Re::Seq(parts) => {
                let mut n = next;
                for part in parts.iter().rev() {
                    n = self.compile(part, n);
                }
                n
            }
            Re::Alt(branches) => {
                let starts: Vec<u32> = branches.iter().map(|b| self.compile(b, next)).collect();
                let mut s = *starts.last().expect("non-empty alternation");
                for &b in starts.iter().rev().skip(1) {
                    s = self.push(Inst::Split(b, s));
                }
                s
            }
            Re::Rep(inner, min, max) => {
                let mut n = match max {
                    None => {
                        let hub = self.push(Inst::Split(0, 0));
                        let body = self.compile(inner, hub);
                        self.insts[hub as usize] = Inst::Split(body, next);
                        hub
                    }
                    Some(max) => {
                        let mut n = next;
                        for _ in *min..*max {
                            let body = self.compile(inner, n);
                            n = self.push(Inst::Split(body, next));
                        }
                        n
                    }
                };
                for _ in 0..*min {
                    n = self.compile(inner, n);
                }
                n
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    #[test]
    fn longest_match_and_priority() {
        let rules = vec![lit("can"), set("a-z").plus(), seq!["c", set("a-z").rep(1, 2)]];
        let nfa = Nfa::new(&rules);
        let mut scratch = Scratch::default();
        let u = units("cannot!");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((6, 1)));
        let u = units("can!");
        // "can" is matched by all three rules; the first one wins.
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((3, 0)));
        let u = units("CAN");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((3, 0)));
        let u = units("!");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), None);
    }

    #[test]
    fn lazy_dfa_agrees_with_nfa() {
        let rules =
            vec![lit("can"), set("a-z").plus(), seq!["c", set("a-z").rep(1, 2)], seq![lit("é"), nset(" ").star()]];
        let nfa = Nfa::new(&rules);
        let mut dfa = LazyDfa::new(&nfa);
        let mut scratch = Scratch::default();
        for text in ["cannot!", "can!", "CAN", "!", "éa\u{1F600}b c", "", "ca"] {
            let u = units(text);
            for start in 0..u.len() {
                assert_eq!(
                    dfa.longest(&u, start, u.len()),
                    nfa.longest(&u, start, u.len(), &mut scratch),
                    "{text:?} at {start}"
                );
            }
        }
    }

    #[test]
    fn ends_lists_every_accepting_position() {
        let nfa = Nfa::new(&[seq!["a", lit("b").star()]]);
        let mut scratch = Scratch::default();
        let u = units("abbbc");
        assert_eq!(nfa.ends(&u, 0, u.len(), &mut scratch), vec![1, 2, 3, 4]);
        assert_eq!(nfa.ends(&u, 0, 2, &mut scratch), vec![1, 2]);
    }

    #[test]
    fn classes_are_case_sensitive_and_negation_covers_surrogates() {
        let nfa = Nfa::new(&[set("A-Z").plus(), nset(" ").plus()]);
        let mut scratch = Scratch::default();
        let u = units("ABc");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((3, 1)));
        let u = units("AB c");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((2, 0)));
        let u = units("\u{1F600}x");
        assert_eq!(nfa.longest(&u, 0, u.len(), &mut scratch), Some((3, 1)));
    }

    #[test]
    fn unicode_categories() {
        assert!(is_letter('é' as u16));
        assert!(!is_letter('½' as u16));
        assert!(!is_letter(0x2160)); // ROMAN NUMERAL ONE is Nl, not a Java letter
        assert!(is_digit(0x0663));
        assert!(!is_digit('²' as u16));
        assert!(is_upper('É' as u16));
        assert!(!is_letter(0xD83D));
    }
}
