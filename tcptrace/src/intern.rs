//! Interned owners: many sockets, few processes. The per-socket tables (the owner cache in
//! `owners`, the tracker's sockets in `track`) hold a 4-byte id into one table of distinct
//! owners instead of the 28-byte owner itself, which with 162,000 open sockets saves about
//! 4 MB per table. The table is bounded as processes come and go: once it holds more than
//! twice as many owners as there are live references (and at least [`SLACK`]), its user
//! calls [`Interner::compact`] with every live id, and owners nobody refers to are
//! forgotten. Each user's tests run against the plain version it replaced.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// Below this many distinct values the table is never compacted.
pub const SLACK: usize = 4096;

/// A table of distinct values, each named by a `u32` id.
#[derive(Debug)]
pub struct Interner<T> {
    distinct: Vec<T>,
    ids: FxHashMap<T, u32>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            distinct: Vec::new(),
            ids: FxHashMap::default(),
        }
    }
}

impl<T: Copy + Eq + Hash> Interner<T> {
    /// The id of `v`, added if new.
    pub fn id(&mut self, v: T) -> u32 {
        if let Some(&id) = self.ids.get(&v) {
            return id;
        }
        // Compaction keeps the table within twice its users' live entries (themselves
        // bounded far below u32::MAX) plus the slack.
        let id = self.distinct.len() as u32;
        self.distinct.push(v);
        self.ids.insert(v, id);
        id
    }

    /// The value of an id this table gave out (and has not compacted away).
    pub fn get(&self, id: u32) -> T {
        self.distinct[id as usize]
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.distinct.len()
    }

    /// Whether a user with `live` references should call [`Interner::compact`] now.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.distinct.len() >= SLACK && self.distinct.len() >= 2 * live
    }

    /// Forgets every value no id in `live` names and renumbers the ids in place.
    pub fn compact<'a>(&mut self, live: impl Iterator<Item = &'a mut u32>) {
        let mut new_id = vec![u32::MAX; self.distinct.len()];
        let mut kept = Vec::new();
        for id in live {
            let old = *id as usize;
            if new_id[old] == u32::MAX {
                new_id[old] = kept.len() as u32;
                kept.push(self.distinct[old]);
            }
            *id = new_id[old];
        }
        self.ids = kept
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, i as u32))
            .collect();
        self.distinct = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_live_values_under_new_ids() {
        let mut t = Interner::<u64>::default();
        let mut refs: Vec<u32> = (0..10_000u64).map(|v| t.id(v * 7)).collect();
        assert_eq!(t.id(7), refs[1]);
        // Keep every hundredth reference alive.
        refs.retain(|&id| t.get(id) % 700 == 0);
        let before: Vec<u64> = refs.iter().map(|&id| t.get(id)).collect();
        assert!(t.wants_compaction(refs.len()));
        t.compact(refs.iter_mut());
        assert_eq!(t.len(), refs.len());
        let after: Vec<u64> = refs.iter().map(|&id| t.get(id)).collect();
        assert_eq!(before, after);
        // New values and old ones still intern consistently.
        assert_eq!(t.id(0), refs[0]);
        let fresh = t.id(123_456_789);
        assert_eq!(t.get(fresh), 123_456_789);
        assert!(!t.wants_compaction(refs.len()));
    }
}
