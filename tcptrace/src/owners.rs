//! The per-socket owner cache: which process a socket belongs to, for the events that run in
//! softirq or timer context (SYN_SENT->ESTABLISHED, ESTABLISHED->CLOSE_WAIT, resets, ...),
//! where the kernel's current task is not the owner.
//!
//! The kernel program names the owner only where it knows it without a map lookup: the
//! current task in a system call on the socket (connect, listen, shutdown, close), and the
//! listener's process for a new server child. Every other event arrives without one, and this
//! cache fills it in from the socket's earlier events, exactly as the kernel-side cache did:
//! a system call's task replaces the entry, a new child takes its listener's owner, CLOSE
//! ends the entry, and a filled-in owner says `cached`. Keeping it here instead of in a
//! kernel hash map took about 150 ns off every state change in the kernel (map lookups,
//! LRU inserts and deletes were half of the program's time).
//!
//! The same cache carries the socket's identity (cgroup id, network namespace), which the
//! kernel reads only on a socket's first event (connect, listen, a server child's creation),
//! to all its later events. And the kernel reads the owner's name only on that first event:
//! on a close or shutdown it sends the pid alone, and the name comes from the socket's
//! entry (same process), or from the last name seen for that process, or from a resolver
//! the live run installs (`/proc/PID/comm`); failing all three it stays empty (unknown).
//!
//! It runs after the reorder stage, so each socket's events are in time order. A recording
//! holds the filled-in events; replaying them through the cache changes nothing (only events
//! that carry their owner update it, and those are the same in both runs).

use std::collections::hash_map::Entry as MapEntry;

use rustc_hash::FxHashMap;

use crate::{
    decode::{Comm, Event, Ident, Kind, Owner, OwnerSource, TcpState},
    intern::Interner,
};

/// Most process names remembered by pid (a process's name, for the closes that arrive
/// without one); at this size the map starts over.
const COMM_CAPACITY: usize = 1 << 16;

/// Finds a process's name by (tgid, pid) when no event named it (the live run reads /proc).
pub type CommResolver = Box<dyn FnMut(u32, u32) -> Option<Comm> + Send>;

/// An entry's owner id when no owner is known (the socket's identity is).
const NO_OWNER: u32 = u32::MAX;

/// What is remembered of one socket, 16 bytes: its owner's id in the [`Interner`] and its
/// identity, 0 meaning unknown (no cgroup or namespace has id 0: the root cgroup is 1).
#[derive(Clone, Copy, Debug)]
struct Entry {
    owner: u32,
    netns: u32,
    cgroup: u64,
}

impl Entry {
    const EMPTY: Self = Self {
        owner: NO_OWNER,
        netns: 0,
        cgroup: 0,
    };

    fn ident(&self) -> Ident {
        Ident {
            cgroup: (self.cgroup != 0).then_some(self.cgroup),
            netns: (self.netns != 0).then_some(self.netns),
        }
    }
}

/// Most sockets remembered. Entries end at the socket's CLOSE; only a CLOSE the tracer never
/// saw (lost, or the kernel skipped the program) leaves one behind, and at this size an
/// arbitrary entry makes room (the kernel-side cache was an LRU map of 65,536).
const CAPACITY: usize = 1 << 18;

/// Socket address -> its owner, as the last system call or its listener named it.
///
/// Each entry holds an id into a table of distinct owners ([`Interner`]) instead of the
/// owner itself (with 162,000 open sockets the map takes about 4 MB instead of 10.5 MB).
/// The tests run random event sequences against the plain map this replaced.
#[derive(Default)]
pub struct Owners {
    by_sock: FxHashMap<u64, Entry>,
    owners: Interner<Owner>,
    /// tgid -> the last name an event gave it.
    comms: FxHashMap<u32, Comm>,
    resolver: Option<CommResolver>,
}

impl Owners {
    /// Remembers the owners of sockets that existed before tracing started (from /proc), as
    /// if an earlier event had named them.
    pub fn seed(&mut self, owners: impl IntoIterator<Item = (u64, Owner)>) {
        for (sock, owner) in owners {
            self.make_room(sock, true);
            let id = self.owners.id(Owner {
                source: OwnerSource::Cached,
                ..owner
            });
            self.by_sock.entry(sock).or_insert(Entry::EMPTY).owner = id;
        }
    }

    /// The housekeeping that needs the whole map, before an entry for `sock` is written:
    /// forgets unused owners when about to intern one (`interning`), and at [`CAPACITY`]
    /// drops an arbitrary entry to make room for a new one.
    fn make_room(&mut self, sock: u64, interning: bool) {
        if interning && self.owners.wants_compaction(self.by_sock.len()) {
            self.owners.compact(
                self.by_sock
                    .values_mut()
                    .map(|e| &mut e.owner)
                    .filter(|id| **id != NO_OWNER),
            );
        }
        if self.by_sock.len() >= CAPACITY
            && !self.by_sock.contains_key(&sock)
            && let Some(&old) = self.by_sock.keys().next()
        {
            self.by_sock.remove(&old);
        }
    }

    /// The identity remembered for a socket (unknown once it closed or if never read).
    pub fn ident(&self, sock: u64) -> Ident {
        self.by_sock
            .get(&sock)
            .map_or_else(Ident::default, Entry::ident)
    }

    /// Installs the last resort for names the kernel did not send (see the module doc).
    pub fn set_resolver(&mut self, r: CommResolver) {
        self.resolver = Some(r);
    }

    /// Fills in the owner (and its name) and the identity of an event that lacks them, and
    /// keeps the cache current.
    ///
    /// One hash lookup of the socket per event (an entry, read once, written back or removed
    /// through the same slot), where the plain version (`tests::PlainOwners`, which the tests
    /// hold this to) did up to seven; and an owner is interned only when it differs from the
    /// one the entry already names.
    pub fn fill(&mut self, ev: &mut Event) {
        let new_life = matches!(
            ev.kind,
            Kind::State {
                old: TcpState::Listen,
                new: TcpState::SynRecv,
            } | Kind::State {
                old: TcpState::Close,
                new: TcpState::SynSent | TcpState::Listen,
            }
        );
        let close = matches!(
            ev.kind,
            Kind::State {
                new: TcpState::Close,
                ..
            }
        );
        let owns = ev
            .owner
            .is_some_and(|o| matches!(o.source, OwnerSource::Current | OwnerSource::Listener));
        // What the event leaves in the cache (a CLOSE leaves nothing).
        let writes = !close && (owns || ev.ident != Ident::default());
        if writes {
            self.make_room(ev.sock, owns);
        }
        let Self {
            by_sock,
            owners,
            comms,
            resolver,
        } = self;
        let slot = by_sock.entry(ev.sock);
        // The entry as the event finds it: a new socket at this address finds none (an entry
        // for it is a dead socket's).
        let prior = match &slot {
            MapEntry::Occupied(o) if !new_life => Some(*o.get()),
            _ => None,
        };
        let prior_owner = prior
            .filter(|e| e.owner != NO_OWNER)
            .map(|e| owners.get(e.owner));
        if let Some(o) = ev.owner.as_mut()
            && o.source == OwnerSource::Current
        {
            if o.comm == Comm::default() {
                o.comm = name(comms, resolver, prior_owner, o);
            } else if comms.get(&o.tgid) != Some(&o.comm) {
                remember_comm(comms, o.tgid, o.comm);
            }
        }
        let mut e = prior.unwrap_or(Entry::EMPTY);
        match ev.owner {
            Some(o) if owns => {
                if writes {
                    // Stored as `Cached`: the cache names every owner it fills in so.
                    let o = Owner {
                        source: OwnerSource::Cached,
                        ..o
                    };
                    if prior_owner != Some(o) {
                        e.owner = owners.id(o);
                    }
                }
            }
            Some(_) => {}
            None => {
                ev.owner = prior_owner.map(|o| Owner {
                    source: OwnerSource::Cached,
                    ..o
                });
            }
        }
        e.cgroup = ev.ident.cgroup.unwrap_or(e.cgroup);
        e.netns = ev.ident.netns.unwrap_or(e.netns);
        ev.ident = e.ident();
        match slot {
            MapEntry::Occupied(mut o) if writes => *o.get_mut() = e,
            MapEntry::Vacant(v) if writes => {
                v.insert(e);
            }
            MapEntry::Occupied(o) if close || new_life => {
                o.remove();
            }
            _ => {}
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_sock
            .values()
            .filter(|e| e.owner != NO_OWNER)
            .count()
    }
}

/// The name of a current owner whose name the kernel did not read: the socket's entry's
/// (same process), the last one an event gave the process, or the resolver's; else empty.
fn name(
    comms: &mut FxHashMap<u32, Comm>,
    resolver: &mut Option<CommResolver>,
    entry_owner: Option<Owner>,
    o: &Owner,
) -> Comm {
    if let Some(c) = entry_owner.filter(|c| c.tgid == o.tgid && c.comm != Comm::default()) {
        return c.comm;
    }
    if let Some(c) = comms.get(&o.tgid) {
        return *c;
    }
    if let Some(c) = resolver.as_mut().and_then(|r| r(o.tgid, o.pid)) {
        remember_comm(comms, o.tgid, c);
        return c;
    }
    Comm::default()
}

fn remember_comm(comms: &mut FxHashMap<u32, Comm>, tgid: u32, comm: Comm) {
    if comms.len() >= COMM_CAPACITY {
        comms.clear();
    }
    comms.insert(tgid, comm);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Comm, decode, tests::raw_state};

    fn owner(tgid: u32, source: OwnerSource) -> Option<Owner> {
        Some(Owner {
            tgid,
            pid: tgid,
            comm: Comm::from_str_lossy("srv"),
            source,
        })
    }

    /// An event of socket `sk` going `old -> new` with this owner (or none, as the kernel
    /// sends softirq transitions).
    fn ev(sk: u64, old: u8, new: u8, o: Option<Owner>) -> Event {
        let mut e = decode(&raw_state(1, sk, old, new)).expect("decodes");
        e.owner = o;
        e
    }

    fn filled(c: &mut Owners, mut e: Event) -> Option<(u32, OwnerSource)> {
        c.fill(&mut e);
        e.owner.map(|o| (o.tgid, o.source))
    }

    #[test]
    fn softirq_transitions_take_the_owner_of_the_sockets_last_system_call() {
        let mut c = Owners::default();
        let cur = OwnerSource::Current;
        // Client: connect (current), then softirq transitions, then close by another task.
        assert_eq!(filled(&mut c, ev(1, 7, 2, owner(10, cur))), Some((10, cur)));
        assert_eq!(
            filled(&mut c, ev(1, 2, 1, None)),
            Some((10, OwnerSource::Cached))
        );
        assert_eq!(filled(&mut c, ev(1, 1, 4, owner(11, cur))), Some((11, cur)));
        assert_eq!(
            filled(&mut c, ev(1, 4, 5, None)),
            Some((11, OwnerSource::Cached))
        );
        assert_eq!(
            filled(&mut c, ev(1, 5, 7, None)),
            Some((11, OwnerSource::Cached))
        );
        // CLOSE ended the entry: a new socket at the same address knows nothing yet.
        assert_eq!(filled(&mut c, ev(1, 1, 8, None)), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_server_child_inherits_its_listener_and_replaces_a_dead_sockets_entry() {
        let mut c = Owners::default();
        let lst = OwnerSource::Listener;
        c.seed([(2, owner(99, OwnerSource::Current).expect("owner"))]);
        assert_eq!(
            filled(&mut c, ev(2, 10, 3, owner(20, lst))),
            Some((20, lst))
        );
        assert_eq!(
            filled(&mut c, ev(2, 3, 1, None)),
            Some((20, OwnerSource::Cached))
        );
        // A child whose listener is unknown does not take the previous socket's owner.
        c.seed([(3, owner(99, OwnerSource::Current).expect("owner"))]);
        assert_eq!(filled(&mut c, ev(3, 10, 3, None)), None);
        assert_eq!(filled(&mut c, ev(3, 3, 1, None)), None);
    }

    #[test]
    fn seeded_sockets_and_resets_are_named_as_cached() {
        let mut c = Owners::default();
        c.seed([(4, owner(30, OwnerSource::Current).expect("owner"))]);
        assert_eq!(
            filled(&mut c, ev(4, 1, 8, None)),
            Some((30, OwnerSource::Cached))
        );
        let mut reset = ev(4, 1, 8, None);
        reset.kind = Kind::ResetReceived;
        assert_eq!(filled(&mut c, reset), Some((30, OwnerSource::Cached)));
    }

    #[test]
    fn identity_read_on_the_first_event_reaches_the_sockets_later_events() {
        let mut c = Owners::default();
        let id = Ident {
            cgroup: Some(77),
            netns: Some(4026531840),
        };
        let mut first = ev(6, 7, 2, owner(10, OwnerSource::Current));
        first.ident = id;
        c.fill(&mut first);
        for (old, new) in [(2, 1), (1, 4), (4, 5), (5, 7)] {
            let mut e = ev(6, old, new, None);
            c.fill(&mut e);
            assert_eq!(e.ident, id, "{old}->{new}");
        }
        // Closed: a new socket at the address starts unknown, and a new child does not take
        // a dead socket's identity.
        let mut e = ev(6, 1, 8, None);
        c.fill(&mut e);
        assert_eq!(e.ident, Ident::default());
        let mut f = ev(7, 7, 2, None);
        f.ident = id;
        c.fill(&mut f);
        let mut child = ev(7, 10, 3, None);
        c.fill(&mut child);
        assert_eq!(child.ident, Ident::default());
    }

    #[test]
    fn a_close_without_a_name_takes_the_sockets_or_the_processes_or_the_resolvers() {
        let mut c = Owners::default();
        let cur = OwnerSource::Current;
        let unnamed = |tgid| {
            Some(Owner {
                comm: Comm::default(),
                ..owner(tgid, cur).expect("owner")
            })
        };
        let name = |c: &mut Owners, e: Event| {
            let mut e = e;
            c.fill(&mut e);
            e.owner.map(|o| o.comm.as_str().into_owned())
        };
        // Same process as the socket's entry: its name.
        c.fill(&mut ev(8, 7, 2, owner(10, cur)));
        assert_eq!(name(&mut c, ev(8, 1, 4, unnamed(10))), Some("srv".into()));
        // Another process (a forked child closing an inherited socket) seen before.
        let mut other = ev(9, 7, 10, owner(11, cur));
        other.owner = Some(Owner {
            comm: Comm::from_str_lossy("worker"),
            ..other.owner.expect("owner")
        });
        c.fill(&mut other);
        c.fill(&mut ev(12, 7, 2, owner(10, cur)));
        assert_eq!(
            name(&mut c, ev(12, 1, 4, unnamed(11))),
            Some("worker".into())
        );
        // Never seen: the resolver; and without one, empty (unknown), never a wrong name.
        assert_eq!(name(&mut c, ev(13, 1, 4, unnamed(12))), Some(String::new()));
        c.set_resolver(Box::new(|tgid, _| {
            (tgid == 12).then(|| Comm::from_str_lossy("late"))
        }));
        assert_eq!(name(&mut c, ev(14, 1, 4, unnamed(12))), Some("late".into()));
    }

    #[test]
    fn events_that_carry_a_cached_owner_are_left_alone() {
        // As in a replayed recording.
        let mut c = Owners::default();
        let e = ev(5, 2, 1, owner(40, OwnerSource::Cached));
        assert_eq!(filled(&mut c, e), Some((40, OwnerSource::Cached)));
        assert_eq!(c.len(), 0);
    }

    /// The plain version `Owners` replaced, step by step as it was before the one-lookup
    /// rewrite (a lookup per question, up to seven per event), with owners inline instead of
    /// interned: the twin the fast version is tested against.
    #[derive(Default)]
    pub struct PlainOwners {
        /// Socket -> owner, cgroup id, namespace (0: unknown).
        by_sock: FxHashMap<u64, (Option<Owner>, u64, u32)>,
        comms: FxHashMap<u32, Comm>,
        resolver: Option<CommResolver>,
    }

    impl PlainOwners {
        fn entry(&mut self, sock: u64) -> &mut (Option<Owner>, u64, u32) {
            if self.by_sock.len() >= CAPACITY
                && !self.by_sock.contains_key(&sock)
                && let Some(&old) = self.by_sock.keys().next()
            {
                self.by_sock.remove(&old);
            }
            self.by_sock.entry(sock).or_insert((None, 0, 0))
        }

        fn get(&self, sock: u64) -> Option<Owner> {
            self.by_sock.get(&sock).and_then(|e| e.0)
        }

        fn ident(&self, sock: u64) -> Ident {
            self.by_sock.get(&sock).map_or_else(Ident::default, |e| {
                Entry {
                    owner: NO_OWNER,
                    cgroup: e.1,
                    netns: e.2,
                }
                .ident()
            })
        }

        fn remember_comm(&mut self, tgid: u32, comm: Comm) {
            if self.comms.len() >= COMM_CAPACITY {
                self.comms.clear();
            }
            self.comms.insert(tgid, comm);
        }

        fn name(&mut self, sock: u64, o: &Owner) -> Comm {
            if let Some(c) = self
                .get(sock)
                .filter(|c| c.tgid == o.tgid && c.comm != Comm::default())
            {
                return c.comm;
            }
            if let Some(c) = self.comms.get(&o.tgid) {
                return *c;
            }
            if let Some(c) = self.resolver.as_mut().and_then(|r| r(o.tgid, o.pid)) {
                self.remember_comm(o.tgid, c);
                return c;
            }
            Comm::default()
        }

        pub fn fill(&mut self, ev: &mut Event) {
            // A socket's first event: an entry for its address is a dead socket's.
            let new_life = matches!(
                ev.kind,
                Kind::State {
                    old: TcpState::Listen,
                    new: TcpState::SynRecv,
                } | Kind::State {
                    old: TcpState::Close,
                    new: TcpState::SynSent | TcpState::Listen,
                }
            );
            if new_life {
                self.by_sock.remove(&ev.sock);
            }
            if let Some(o) = ev.owner.as_mut()
                && o.source == OwnerSource::Current
            {
                if o.comm == Comm::default() {
                    o.comm = self.name(ev.sock, o);
                } else if self.comms.get(&o.tgid) != Some(&o.comm) {
                    self.remember_comm(o.tgid, o.comm);
                }
            }
            match ev.owner {
                Some(o) if matches!(o.source, OwnerSource::Current | OwnerSource::Listener) => {
                    self.entry(ev.sock).0 = Some(o);
                }
                Some(_) => {}
                None if new_life => {}
                None => {
                    ev.owner = self.get(ev.sock).map(|o| Owner {
                        source: OwnerSource::Cached,
                        ..o
                    });
                }
            }
            if ev.ident != Ident::default() {
                let e = self.entry(ev.sock);
                e.1 = ev.ident.cgroup.unwrap_or(e.1);
                e.2 = ev.ident.netns.unwrap_or(e.2);
                ev.ident = self.ident(ev.sock);
            } else if self.by_sock.contains_key(&ev.sock) {
                ev.ident = self.ident(ev.sock);
            }
            if let Kind::State {
                new: TcpState::Close,
                ..
            } = ev.kind
            {
                self.by_sock.remove(&ev.sock);
            }
        }

        fn len(&self) -> usize {
            self.by_sock.values().filter(|e| e.0.is_some()).count()
        }
    }

    #[test]
    fn one_lookup_interned_owners_fill_events_as_the_plain_map_did() {
        // Random events over few sockets and many processes, so that interning, entry
        // replacement, CLOSE, names from the entry, the process or the resolver, identities
        // and the forgetting of unused owners all happen often.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let resolver = || -> CommResolver {
            Box::new(|tgid, _| (tgid % 3 == 0).then(|| Comm::from_str_lossy(&format!("r{tgid}"))))
        };
        let mut fast = Owners::default();
        let mut plain = PlainOwners::default();
        fast.set_resolver(resolver());
        plain.resolver = Some(resolver());
        let states = [1u8, 2, 3, 4, 5, 7, 8, 9, 10];
        let mut named = 0;
        for step in 0..300_000u64 {
            let sk = next() % 64;
            let old = states[(next() % 9) as usize];
            let new = states[(next() % 9) as usize];
            let tgid = if next() % 2 == 0 {
                (next() % 20_000) as u32
            } else {
                (next() % 16) as u32
            };
            let o = match next() % 6 {
                0 => None,
                1 => owner(tgid, OwnerSource::Current),
                // As the kernel sends a close: the pid without its name.
                2 => Some(Owner {
                    comm: Comm::default(),
                    ..owner(tgid, OwnerSource::Current).expect("owner")
                }),
                3 => owner((next() % 8) as u32, OwnerSource::Listener),
                4 => owner((next() % 8) as u32, OwnerSource::Proc),
                _ => owner((next() % 8) as u32, OwnerSource::Cached),
            };
            let mut a = ev(sk, old, new, o);
            match next() % 8 {
                0 => a.ident.cgroup = Some(1 + next() % 5),
                1 => a.ident.netns = Some(1 + (next() % 3) as u32),
                2 => {
                    a.ident = Ident {
                        cgroup: Some(next() % 3),
                        netns: Some((next() % 3) as u32),
                    }
                }
                _ => {}
            }
            if step % 5000 == 0 {
                let seeded = [(next() % 64, owner(tgid, OwnerSource::Proc).expect("owner"))];
                fast.seed(seeded);
                for (sock, o) in seeded {
                    plain.entry(sock).0 = Some(o);
                }
            }
            let mut b = a;
            fast.fill(&mut a);
            plain.fill(&mut b);
            assert_eq!(a, b, "step {step}");
            named += usize::from(a.owner.is_some_and(|o| o.comm.0[0] == b'r'));
            let probe = next() % 64;
            assert_eq!(fast.ident(probe), plain.ident(probe), "step {step}");
            assert_eq!(fast.len(), plain.len(), "step {step}");
        }
        assert!(named > 1000, "the resolver named only {named} owners");
        // The table of distinct owners stayed bounded although 20,000 pids came and went.
        assert!(
            fast.owners.len() <= crate::intern::SLACK.max(2 * fast.len()) + 1,
            "{} distinct owners for {} entries",
            fast.owners.len(),
            fast.len()
        );
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut c = Owners::default();
        let extra = 1000u64;
        for sk in 0..CAPACITY as u64 + extra {
            c.fill(&mut ev(
                sk,
                7,
                2,
                owner((sk % 50) as u32, OwnerSource::Current),
            ));
        }
        assert_eq!(c.by_sock.len(), CAPACITY);
        // The newest socket kept its owner.
        let last = CAPACITY as u64 + extra - 1;
        assert_eq!(
            filled(&mut c, ev(last, 2, 1, None)),
            Some(((last % 50) as u32, OwnerSource::Cached))
        );
    }
}
