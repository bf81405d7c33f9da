//! Entry IDs keyed by a time (unix seconds), at most one time per ID: the SVID manager's rotation and
//! retry wake-ups and its SVID expiries. Setting, removing and taking what is due cost O(log n), so a change
//! to one entry never walks all of them.

use std::collections::{BTreeSet, HashMap};

use crate::state::EntryId;

#[derive(Debug, Default)]
pub struct Schedule {
    by_time: BTreeSet<(i64, EntryId)>,
    at: HashMap<EntryId, i64>,
}

impl Schedule {
    /// Puts `id` at `t`, replacing its earlier time.
    pub fn set(&mut self, id: &EntryId, t: i64) {
        if let Some(old) = self.at.insert(id.clone(), t) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((t, id.clone()));
    }

    pub fn remove(&mut self, id: &str) {
        if let Some((id, old)) = self.at.remove_entry(id) {
            self.by_time.remove(&(old, id));
        }
    }

    /// The earliest time.
    pub fn first(&self) -> Option<i64> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Takes every ID whose time is `now` or earlier, earliest first.
    pub fn take_due(&mut self, now: i64) -> Vec<EntryId> {
        let mut due = vec![];
        while let Some((t, _)) = self.by_time.first()
            && *t <= now
        {
            if let Some((_, id)) = self.by_time.pop_first() {
                self.at.remove(&id);
                due.push(id);
            }
        }
        due
    }

    /// Keeps only the IDs for which `keep` holds (O(n): for a full entry snapshot).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.at.retain(|id, _| keep(id));
        self.by_time.retain(|(_, id)| keep(id));
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntryId {
        s.into()
    }

    #[test]
    fn set_replace_remove_and_take_due() {
        let mut s = Schedule::default();
        assert_eq!(s.first(), None);
        s.set(&id("a"), 30);
        s.set(&id("b"), 10);
        s.set(&id("c"), 20);
        assert_eq!(s.first(), Some(10));
        s.set(&id("b"), 40); // replaced, not added
        assert_eq!((s.len(), s.first()), (3, Some(20)));
        s.remove("c");
        s.remove("nope");
        assert_eq!((s.len(), s.first()), (2, Some(30)));
        assert_eq!(s.take_due(29), Vec::<EntryId>::new());
        s.set(&id("d"), 5);
        assert_eq!(s.take_due(30), vec![id("d"), id("a")]);
        assert_eq!((s.len(), s.first()), (1, Some(40)));
        s.retain(|id| id != "b");
        assert!(s.is_empty());
        assert_eq!(s.first(), None);
    }

    #[test]
    fn same_time_many_ids() {
        let mut s = Schedule::default();
        for name in ["x", "y", "z"] {
            s.set(&id(name), 7);
        }
        assert_eq!(s.take_due(7), vec![id("x"), id("y"), id("z")]);
        assert!(s.is_empty());
    }
}
