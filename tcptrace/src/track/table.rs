//! The tracker's socket table: tracked sockets by socket address, in little memory.
//!
//! A plain `FxHashMap<u64, Sock>` keeps every entry inside the hash table, whose buckets
//! are at most 7/8 full and double when they fill: with 162,000 open sockets it holds
//! 262,144 buckets of a (u64, `Sock`) entry, at most 8 + 152 bytes (a test keeps `Sock` at
//! <= 152) plus a control byte, all of them touched (up to 262,144 * 161 = 42 MB). Here the
//! hash map holds only a 4-byte index per socket (262,144 * (16 + 1) = 4.5 MB, the u64 key
//! padding the pair to 16) and the sockets live densely in a [`Slab`] (freed slots are
//! reused, and capacity never written to is not resident): 162,000 slots of at most 168
//! bytes (160 and the slab's occupied/vacant tag) = 27 MB, so about 32 MB in all.
//! [`Table`] offers exactly the map operations the tracker uses; the tests run random
//! operation sequences against a plain `FxHashMap` twin.

use rustc_hash::FxHashMap;
use slab::Slab;

/// Socket address -> value, stored as index map + slab.
#[derive(Debug)]
pub struct Table<T> {
    index: FxHashMap<u64, u32>,
    slab: Slab<(u64, T)>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            index: FxHashMap::default(),
            slab: Slab::new(),
        }
    }
}

impl<T> Table<T> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut T> {
        let i = *self.index.get(key)?;
        self.slab.get_mut(i as usize).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &u64) -> Option<T> {
        let i = self.index.remove(key)?;
        self.slab.try_remove(i as usize).map(|(_, v)| v)
    }

    /// Inserts or replaces the value of `key`.
    pub fn insert(&mut self, key: u64, value: T) {
        if let Some(v) = self.get_mut(&key) {
            *v = value;
            return;
        }
        let i = self.slab.insert((key, value));
        // More than 4 billion tracked sockets cannot happen: the tracker's size bound
        // (`Limits::max_sockets`) evicts long before.
        self.index.insert(key, i as u32);
    }

    /// The value of `key`, inserted with `f` if absent.
    pub fn get_or_insert_with(&mut self, key: u64, f: impl FnOnce() -> T) -> &mut T {
        let i = match self.index.get(&key) {
            Some(&i) => i as usize,
            None => {
                let i = self.slab.insert((key, f()));
                self.index.insert(key, i as u32);
                i
            }
        };
        &mut self.slab[i].1
    }

    /// Entries the table has room for without growing (the memory it holds).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slab.capacity().max(self.index.capacity())
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slab.iter().map(|(_, (_, v))| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slab.iter_mut().map(|(_, (_, v))| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slab.iter().map(|(_, (k, v))| (*k, v))
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let index = &mut self.index;
        self.slab.retain(|_, (k, v)| {
            let kept = keep(v);
            if !kept {
                index.remove(k);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the twin test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn sorted(t: &Table<u64>) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = t.iter().map(|(k, v)| (k, *v)).collect();
        v.sort_unstable();
        v
    }

    fn sorted_map(m: &FxHashMap<u64, u64>) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn behaves_like_a_hash_map() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut t = Table::<u64>::default();
        let mut m = FxHashMap::<u64, u64>::default();
        for step in 0..200_000u64 {
            // Few keys, so inserts, hits, misses and slot reuse all happen often.
            let key = rng.next() % 512;
            match rng.next() % 6 {
                0 => {
                    t.insert(key, step);
                    m.insert(key, step);
                }
                1 => assert_eq!(t.remove(&key), m.remove(&key)),
                2 => {
                    *t.get_or_insert_with(key, || step) += 1;
                    *m.entry(key).or_insert(step) += 1;
                }
                3 => assert_eq!(t.get_mut(&key).copied(), m.get(&key).copied()),
                4 if step % 1000 == 0 => {
                    let limit = rng.next() % 200_000;
                    t.retain(|v| *v > limit);
                    m.retain(|_, v| *v > limit);
                }
                _ => {
                    if let (Some(a), Some(b)) = (t.get_mut(&key), m.get_mut(&key)) {
                        *a = a.wrapping_mul(3);
                        *b = b.wrapping_mul(3);
                    }
                }
            }
            assert_eq!(t.len(), m.len());
        }
        assert_eq!(sorted(&t), sorted_map(&m));
        let mut vals: Vec<u64> = t.values().copied().collect();
        vals.sort_unstable();
        let mut want: Vec<u64> = m.values().copied().collect();
        want.sort_unstable();
        assert_eq!(vals, want);
    }
}
