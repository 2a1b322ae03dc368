//! Word interning and n-gram counting shared by BLEU and CIDEr-D.
//!
//! pycocoevalcap's `precook` splits a caption with Python's `str.split()`
//! and counts its 1..4-grams into a dict, all unigrams first, then bigrams,
//! and so on, each in order of first occurrence. [`NgramInterner`] keeps that
//! insertion order, which CIDEr-D's floating-point sums depend on.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::pycompat::py_split;

/// Highest n-gram order used by BLEU and CIDEr-D.
pub const MAX_N: usize = 4;

/// An n-gram of up to four interned words, packed as `(id + 1)` per 32-bit
/// lane, so n-grams of different orders never collide.
pub type NgramKey = u128;

/// A small, fast, deterministic hasher for integer keys: the Fx hash with a
/// final avalanche (the murmur3 mixer), so that packed n-gram keys that only
/// differ in their high words still spread over the table's low bits.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Maps words to dense ids.
#[derive(Default, Debug, Clone)]
pub struct Vocab {
    ids: FxHashMap<String, u32>,
    words: Vec<String>,
}

impl Vocab {
    /// The id of `word`, adding it if new.
    pub fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        self.insert(word)
    }

    #[cold]
    fn insert(&mut self, word: &str) -> u32 {
        let id = u32::try_from(self.words.len())
            .ok()
            .filter(|&id| id < u32::MAX)
            .expect("fewer than 2^32 - 1 distinct words");
        self.ids.insert(word.to_string(), id);
        self.words.push(word.to_string());
        id
    }

    /// The id of `word`, if known.
    pub fn get(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }

    /// The word with id `id`.
    pub fn word(&self, id: u32) -> &str {
        &self.words[id as usize]
    }

    /// Number of distinct words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether no word has been interned.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Interns the words of `caption` as split by Python's `str.split()`.
    pub fn intern_caption(&mut self, caption: &str) -> Vec<u32> {
        py_split(caption).map(|w| self.intern(w)).collect()
    }
}

/// Candidates and references split with Python's `str.split()` into word
/// ids, shared by BLEU and CIDEr-D.
#[derive(Default, Debug, Clone)]
pub struct Corpus {
    /// The word ids' vocabulary.
    pub vocab: Vocab,
    /// Candidate word ids, per item.
    pub candidates: Vec<Vec<u32>>,
    /// Reference word ids, per item and reference.
    pub references: Vec<Vec<Vec<u32>>>,
}

impl Corpus {
    /// Splits and interns tokenized captions.
    pub fn new<C: AsRef<str>, R: AsRef<str>>(candidates: &[C], references: &[Vec<R>]) -> Corpus {
        assert_eq!(candidates.len(), references.len(), "one reference list per candidate");
        let mut vocab = Vocab::default();
        let mut cands = Vec::with_capacity(candidates.len());
        let mut refs = Vec::with_capacity(candidates.len());
        for (c, rs) in candidates.iter().zip(references) {
            cands.push(vocab.intern_caption(c.as_ref()));
            refs.push(rs.iter().map(|r| vocab.intern_caption(r.as_ref())).collect());
        }
        Corpus { vocab, candidates: cands, references: refs }
    }

    /// Number of words in all captions.
    pub fn num_words(&self) -> usize {
        self.candidates.iter().map(Vec::len).sum::<usize>()
            + self.references.iter().flatten().map(Vec::len).sum::<usize>()
    }
}

/// Packs `words` (1 to 4 ids) into an [`NgramKey`].
#[inline]
pub fn ngram_key(words: &[u32]) -> NgramKey {
    debug_assert!(!words.is_empty() && words.len() <= MAX_N);
    let mut key: u128 = 0;
    for (i, &w) in words.iter().enumerate() {
        key |= u128::from(w + 1) << (32 * i);
    }
    key
}

/// The order (1..=4) of an n-gram key.
#[inline]
pub fn ngram_order(key: NgramKey) -> usize {
    let bits = 128 - key.leading_zeros() as usize;
    bits.div_ceil(32)
}

/// The word ids of an n-gram key.
pub fn ngram_words(key: NgramKey) -> Vec<u32> {
    (0..ngram_order(key)).map(|i| ((key >> (32 * i)) as u32) - 1).collect()
}

/// One distinct n-gram of a caption: its dense id (see [`NgramInterner`]),
/// order index (`n - 1`) and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Dense n-gram id.
    pub id: u32,
    /// `n - 1` (0 for unigrams).
    pub order: u8,
    /// Occurrences in the caption.
    pub count: u32,
}

/// An open-addressing (linear probing) map from `u64` keys to `u32`, key,
/// value and a generation tag in one 16-byte slot so a lookup touches one
/// cache line, and [`PackedTable::reset`] costs nothing. Used for the
/// corpus-wide n-gram table (far larger than the CPU caches) and for
/// per-item tables.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    value: u32,
    generation: u32,
}

struct PackedTable {
    slots: Vec<Slot>,
    len: usize,
    shift: u32,
    /// Slots of other generations are empty.
    generation: u32,
}

const EMPTY_SLOT: Slot = Slot { key: 0, value: 0, generation: 0 };

impl PackedTable {
    fn with_capacity(n: usize) -> Self {
        let buckets = (n.max(8) * 2).next_power_of_two();
        PackedTable { slots: vec![EMPTY_SLOT; buckets], len: 0, shift: 64 - buckets.trailing_zeros(), generation: 1 }
    }

    #[inline]
    fn bucket(&self, key: u64) -> usize {
        // Fibonacci hashing: the high bits of the product.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Loads the home slots of `keys` without using them: independent loads
    /// the CPU overlaps, so the lookups that follow hit the cache (a safe
    /// stand-in for software prefetching).
    #[inline]
    fn touch(&self, keys: impl Iterator<Item = u64>) {
        let mut acc = 0u64;
        for key in keys {
            acc ^= self.slots[self.bucket(key)].key;
        }
        std::hint::black_box(acc);
    }

    #[inline]
    fn get(&self, key: u64) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut i = self.bucket(key);
        loop {
            let slot = self.slots[i];
            if slot.generation != self.generation {
                return None;
            }
            if slot.key == key {
                return Some(slot.value);
            }
            i = (i + 1) & mask;
        }
    }

    /// The value of `key`, inserting `value()` if absent.
    #[inline]
    fn get_or_insert_with(&mut self, key: u64, value: impl FnOnce() -> u32) -> u32 {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.bucket(key);
        loop {
            let slot = self.slots[i];
            if slot.generation != self.generation {
                let value = value();
                self.slots[i] = Slot { key, value, generation: self.generation };
                self.len += 1;
                return value;
            }
            if slot.key == key {
                return slot.value;
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties the table, sized for about `n` keys (keeps the allocation
    /// when it has the right size).
    fn reset(&mut self, n: usize) {
        let buckets = (n.max(8) * 2).next_power_of_two();
        if self.slots.len() == buckets && self.generation < u32::MAX {
            self.generation += 1;
            self.len = 0;
        } else {
            *self = PackedTable::with_capacity(n);
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        let generation = self.generation;
        *self = PackedTable::with_capacity(old.len());
        for slot in old {
            if slot.generation == generation {
                self.get_or_insert_with(slot.key, || slot.value);
            }
        }
    }
}

impl Default for PackedTable {
    fn default() -> Self {
        PackedTable::with_capacity(0)
    }
}

/// Dense n-gram ids local to a few captions (one item's candidate and
/// references), from a small table that stays in cache.
#[derive(Default)]
pub struct LocalNgrams {
    table: PackedTable,
    next: u32,
    prefix: Vec<u32>,
}

impl LocalNgrams {
    /// Starts a new set of captions with about `windows` n-gram windows.
    pub fn reset(&mut self, windows: usize) {
        // Size classes of powers of two keep the allocation across items.
        self.table.reset(windows.next_power_of_two());
        self.next = 0;
    }

    /// Number of distinct n-grams since the last reset.
    pub fn len(&self) -> usize {
        self.next as usize
    }

    /// Whether no n-gram was seen since the last reset.
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// Calls `f(id, n - 1)` for every 1..=`n`-gram window of `words`
    /// (unigrams first, then bigrams, …).
    pub fn windows(&mut self, words: &[u32], n: usize, mut f: impl FnMut(u32, usize)) {
        self.prefix.clear();
        for k in 1..=n.min(words.len()) {
            for i in 0..=words.len() - k {
                let w = words[i + k - 1];
                let link = if k == 1 { pack(u32::MAX, w) } else { pack(self.prefix[i], w) };
                let next = &mut self.next;
                let id = self.table.get_or_insert_with(link, || {
                    *next += 1;
                    *next - 1
                });
                if k == 1 {
                    self.prefix.push(id);
                } else {
                    self.prefix[i] = id;
                }
                f(id, k - 1);
            }
        }
    }
}

/// Gives every distinct n-gram of a corpus a dense id, and counts captions
/// in pycocoevalcap's dict insertion order.
///
/// Unigram ids come straight from word ids; an n-gram of order `k > 1` is
/// looked up by `(id of its (k-1)-gram prefix, last word)` packed in a `u64`
/// (unique across orders, since the prefix id fixes the order). Duplicates
/// within a caption are merged through a small, cache-resident map.
#[derive(Default)]
pub struct NgramInterner {
    /// Word id -> unigram id (`u32::MAX` if not yet assigned).
    unigrams: Vec<u32>,
    /// `(prefix id << 32 | word)` -> id, for orders 2..=4.
    table: PackedTable,
    /// Per id: `(prefix id << 32 | last word)`, prefix `u32::MAX` for unigrams.
    links: Vec<u64>,
    local: FxHashMap<u32, u32>,
    prefix: Vec<u32>,
}

fn pack(prefix: u32, word: u32) -> u64 {
    u64::from(prefix) << 32 | u64::from(word)
}

impl NgramInterner {
    /// An interner with room for about `ngrams` distinct n-grams.
    pub fn with_capacity(ngrams: usize) -> Self {
        NgramInterner {
            table: PackedTable::with_capacity(ngrams),
            links: Vec::with_capacity(ngrams),
            ..NgramInterner::default()
        }
    }

    /// Number of distinct n-grams seen.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no n-gram has been seen.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The key of n-gram `id`.
    pub fn key(&self, id: u32) -> NgramKey {
        let mut words = Vec::with_capacity(MAX_N);
        let mut id = id;
        loop {
            let link = self.links[id as usize];
            words.push(link as u32);
            let prefix = (link >> 32) as u32;
            if prefix == u32::MAX {
                break;
            }
            id = prefix;
        }
        words.reverse();
        ngram_key(&words)
    }

    /// The id of `key`, if seen.
    pub fn get(&self, key: NgramKey) -> Option<u32> {
        let words = ngram_words(key);
        let mut id = *self.unigrams.get(*words.first()? as usize)?;
        if id == u32::MAX {
            return None;
        }
        for &w in &words[1..] {
            id = self.table.get(pack(id, w))?;
        }
        Some(id)
    }

    /// The distinct 1..=`n`-grams of `words` with counts, in insertion order.
    pub fn count(&mut self, words: &[u32], n: usize) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::with_capacity(words.len() * n);
        self.local.clear();
        self.prefix.clear();
        for k in 1..=n.min(words.len()) {
            if k > 1 {
                let prefix = &self.prefix;
                self.table.touch((0..=words.len() - k).map(|i| pack(prefix[i], words[i + k - 1])));
            }
            for i in 0..=words.len() - k {
                let w = words[i + k - 1];
                let links = &mut self.links;
                let mut new_id = |link: u64| {
                    let id = u32::try_from(links.len())
                        .ok()
                        .filter(|&id| id < u32::MAX)
                        .expect("fewer than 2^32 - 1 distinct n-grams");
                    links.push(link);
                    id
                };
                let id = if k == 1 {
                    let wi = w as usize;
                    if self.unigrams.len() <= wi {
                        self.unigrams.resize(wi + 1, u32::MAX);
                    }
                    if self.unigrams[wi] == u32::MAX {
                        self.unigrams[wi] = new_id(pack(u32::MAX, w));
                    }
                    self.prefix.push(self.unigrams[wi]);
                    self.unigrams[wi]
                } else {
                    let link = pack(self.prefix[i], w);
                    let id = self.table.get_or_insert_with(link, || new_id(link));
                    // The prefix of the window at i for order k + 1.
                    self.prefix[i] = id;
                    id
                };
                match self.local.get(&id) {
                    Some(&j) => entries[j as usize].count += 1,
                    None => {
                        self.local.insert(id, entries.len() as u32);
                        entries.push(Entry { id, order: (k - 1) as u8, count: 1 });
                    }
                }
            }
        }
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// n-gram counts of one caption in pycocoevalcap's dict insertion order.
    #[derive(Debug, Clone, Default)]
    pub struct NgramCounts {
        /// `(n-gram, count)` in order of first insertion.
        pub entries: Vec<(NgramKey, u32)>,
        /// Number of words.
        pub len: usize,
    }

    /// Reusable index used while counting (the straightforward reference the interner is tested against).
    #[derive(Default)]
    pub struct Counter {
        index: FxHashMap<NgramKey, usize>,
    }

    impl Counter {
        /// Counts the 1..=`n`-grams of `words` as pycocoevalcap's `precook`.
        pub fn count(&mut self, words: &[u32], n: usize) -> NgramCounts {
            self.index.clear();
            let mut entries: Vec<(NgramKey, u32)> = Vec::with_capacity(words.len() * n);
            for k in 1..=n {
                if words.len() < k {
                    break;
                }
                for window in words.windows(k) {
                    let key = ngram_key(window);
                    match self.index.get(&key) {
                        Some(&i) => entries[i].1 += 1,
                        None => {
                            self.index.insert(key, entries.len());
                            entries.push((key, 1));
                        }
                    }
                }
            }
            NgramCounts { entries, len: words.len() }
        }
    }

    #[test]
    fn counts_keep_python_dict_order() {
        let mut vocab = Vocab::default();
        let words = vocab.intern_caption("a b a b");
        let counts = Counter::default().count(&words, 4);
        let shown: Vec<(Vec<&str>, u32)> = counts
            .entries
            .iter()
            .map(|&(k, c)| (ngram_words(k).into_iter().map(|w| vocab.word(w)).collect(), c))
            .collect();
        assert_eq!(
            shown,
            vec![
                (vec!["a"], 2),
                (vec!["b"], 2),
                (vec!["a", "b"], 2),
                (vec!["b", "a"], 1),
                (vec!["a", "b", "a"], 1),
                (vec!["b", "a", "b"], 1),
                (vec!["a", "b", "a", "b"], 1),
            ]
        );
        assert_eq!(counts.len, 4);
    }

    #[test]
    fn interner_matches_counter() {
        let mut vocab = Vocab::default();
        let mut interner = NgramInterner::default();
        let mut counter = Counter::default();
        for caption in ["a b a b", "b a c", "a b a b"] {
            let words = vocab.intern_caption(caption);
            let dense = interner.count(&words, 4);
            let sparse = counter.count(&words, 4);
            let shown: Vec<(NgramKey, u32)> = dense.iter().map(|e| (interner.key(e.id), e.count)).collect();
            assert_eq!(shown, sparse.entries);
            for e in &dense {
                assert_eq!(usize::from(e.order) + 1, ngram_order(interner.key(e.id)));
            }
        }
        assert_eq!(interner.get(ngram_key(&[0, 1])), Some(2));
    }

    #[test]
    fn packed_table_grows() {
        let mut t = PackedTable::with_capacity(1);
        for k in 0..10_000u64 {
            assert_eq!(t.get_or_insert_with(k * 7919, || k as u32), k as u32);
        }
        for k in 0..10_000u64 {
            assert_eq!(t.get(k * 7919), Some(k as u32));
        }
        assert_eq!(t.get(3), None);
    }

    #[test]
    fn keys_encode_order() {
        assert_eq!(ngram_order(ngram_key(&[0])), 1);
        assert_eq!(ngram_order(ngram_key(&[0, 0])), 2);
        assert_eq!(ngram_order(ngram_key(&[7, 0, 3, u32::MAX - 1])), 4);
        assert_ne!(ngram_key(&[0]), ngram_key(&[0, 0]));
        assert_eq!(ngram_words(ngram_key(&[5, 6, 7])), vec![5, 6, 7]);
    }
}
