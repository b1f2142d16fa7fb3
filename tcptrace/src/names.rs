//! Names for the ids the kernel gives: cgroup ids to paths and workloads (`cgroups`), network
//! namespace inodes to names under `/run/netns` (as `ip netns` makes them) or `host` for the
//! namespace tcptrace runs in.
//!
//! [`Names`] is one shared handle (the live loop is single-threaded) that the output layer
//! asks: the stream sink for its `cgroup`, `workload`, `container` and `netns_name` fields,
//! the summary and snapshots for their by-workload groups. The pure core never asks it, so a
//! recording replays to the same figures anywhere; only the names differ, and a replay names
//! ids only on the host and boot that recorded them ([`Names::for_recording`]), where the ids
//! still mean the same cgroups and namespaces (elsewhere they show as ids).
//!
//! Like the cgroup walk, `/run/netns` is read again on a miss at most once per
//! [`RESCAN_EVERY`]; a namespace deleted while tracing keeps its last name. Each entry is
//! `stat`ed (it is a bind mount of the namespace: the mount's inode is the namespace's).

use std::{
    cell::RefCell,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use crate::cgroups::{Cgroup, Cgroups, RESCAN_EVERY};

/// The directory `ip netns add` names namespaces in.
pub const RUN_NETNS: &str = "/run/netns";

/// Network namespace inode -> name.
pub struct NetnsNames {
    dir: PathBuf,
    /// The namespace tcptrace runs in, shown as `host` (the name shared, not built per ask).
    host: Option<(u32, Rc<str>)>,
    by_inode: FxHashMap<u32, Rc<str>>,
    last_scan: Option<Instant>,
    /// Directory reads made, for tests.
    pub scans: u64,
}

impl NetnsNames {
    /// Names from `dir` (`/run/netns`, or a test's directory), with `host` for the given
    /// namespace.
    pub fn at(dir: PathBuf, host: Option<u32>, now: Instant) -> Self {
        let mut n = Self {
            dir,
            host: host.map(|ino| (ino, Rc::from("host"))),
            by_inode: FxHashMap::default(),
            last_scan: None,
            scans: 0,
        };
        n.scan(now);
        n
    }

    fn scan(&mut self, now: Instant) {
        self.last_scan = Some(now);
        self.scans += 1;
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            // Follows the bind mount to the namespace (not the mount point file's inode).
            let Ok(m) = std::fs::metadata(e.path()) else {
                continue;
            };
            let Ok(ino) = u32::try_from(m.ino()) else {
                continue;
            };
            let name = e.file_name().to_string_lossy().into_owned();
            if self.by_inode.get(&ino).is_none_or(|n| **n != *name) {
                self.by_inode.insert(ino, name.into());
            }
        }
    }

    /// The name of namespace `ino` if already known (no directory read, no clock).
    fn known(&self, ino: u32) -> Option<Rc<str>> {
        if let Some(n) = self.by_inode.get(&ino) {
            return Some(Rc::clone(n));
        }
        match &self.host {
            Some((host, name)) if *host == ino => Some(Rc::clone(name)),
            _ => None,
        }
    }

    /// The name of namespace `ino`: `host`, its `/run/netns` name, or `None`.
    pub fn get(&mut self, ino: u32, now: Instant) -> Option<Rc<str>> {
        if let Some(n) = self.known(ino) {
            return Some(n);
        }
        if self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < RESCAN_EVERY)
        {
            return None;
        }
        self.scan(now);
        self.by_inode.get(&ino).cloned()
    }
}

struct Inner {
    cgroups: Cgroups,
    netns: NetnsNames,
    /// The last cgroup found (a stream asks for the same few in a row). Misses are not
    /// remembered here: the next ask may find the cgroup by walking the tree again.
    last: Option<(u64, Rc<Cgroup>)>,
    /// Why there are no names, said on stderr at the first id asked for (so a recording
    /// without ids gets no note).
    note: Option<String>,
}

/// The shared handle the output layer names ids through (see the module doc).
#[derive(Clone)]
pub struct Names(Rc<RefCell<Inner>>);

impl Names {
    fn new(cgroups: Cgroups, netns: NetnsNames) -> Self {
        Self(Rc::new(RefCell::new(Inner {
            cgroups,
            netns,
            last: None,
            note: None,
        })))
    }

    /// This host's names (a live run, or a recording made here since the last boot).
    pub fn system() -> Self {
        let now = Instant::now();
        let host = std::fs::metadata("/proc/self/ns/net")
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok());
        Self::new(
            Cgroups::system(now),
            NetnsNames::at(PathBuf::from(RUN_NETNS), host, now),
        )
    }

    /// No names: every id shows as an id.
    pub fn none() -> Self {
        let now = Instant::now();
        Self::new(Cgroups::none(), NetnsNames::at(PathBuf::new(), None, now))
    }

    /// Fixed names (tests of the outputs): cgroup paths and namespace names by id.
    #[cfg(test)]
    pub fn fixed(cgroups: &[(u64, &str)], netns: &[(u32, &str)]) -> Self {
        let mut n = NetnsNames::at(PathBuf::new(), None, Instant::now());
        for (ino, name) in netns {
            n.by_inode.insert(*ino, (*name).into());
        }
        Self::new(Cgroups::fixed(cgroups), n)
    }

    /// Names for replaying a recording made on `host` with the wall clock `realtime_offset_ns`
    /// ahead of the monotonic one: this host's names when both match (same host, same boot,
    /// within a minute of clock adjustments), else none, which a note on stderr says.
    pub fn for_recording(host: &str, realtime_offset_ns: i64) -> Self {
        let here = crate::clock::Clock::measure();
        let same_boot = (here.realtime_offset_ns - realtime_offset_ns).unsigned_abs()
            < Duration::from_secs(60).as_nanos() as u64;
        if host == crate::host::host_name() && same_boot {
            return Self::system();
        }
        let names = Self::none();
        names.0.borrow_mut().note = Some(format!(
            "the recording was made on {host} {}: its cgroups and network namespaces show as \
             ids (names are looked up only on the host and boot that recorded them)",
            if host == crate::host::host_name() {
                "before this host's last boot"
            } else {
                "(not this host)"
            }
        ));
        names
    }

    fn say_note(inner: &mut Inner) {
        if let Some(n) = inner.note.take() {
            eprintln!("tcptrace: note: {n}");
        }
    }

    /// The cgroup of `id`, if it can be named. Asked for on every line a stream writes, so the
    /// clock is read only when the cgroup is not known yet (a walk may be due).
    pub fn cgroup(&self, id: u64) -> Option<Rc<Cgroup>> {
        self.cgroup_with(id, Instant::now)
    }

    /// [`Names::cgroup`] at time `now` (what the walks' rate limit goes by).
    #[cfg(test)]
    fn cgroup_at(&self, id: u64, now: Instant) -> Option<Rc<Cgroup>> {
        self.cgroup_with(id, || now)
    }

    fn cgroup_with(&self, id: u64, now: impl FnOnce() -> Instant) -> Option<Rc<Cgroup>> {
        let mut inner = self.0.borrow_mut();
        if let Some((last, c)) = &inner.last
            && *last == id
        {
            return Some(Rc::clone(c));
        }
        Self::say_note(&mut inner);
        let c = match inner.cgroups.known(id) {
            Some(c) => c,
            None => inner.cgroups.get(id, now())?,
        };
        inner.last = Some((id, Rc::clone(&c)));
        Some(c)
    }

    /// What groups by workload call a cgroup: its workload's name, else its path, else
    /// `cgroup ID`; `?` for an unknown id (0).
    pub fn label(&self, id: u64) -> String {
        if id == 0 {
            return "?".to_owned();
        }
        self.cgroup(id)
            .map_or_else(|| format!("cgroup {id}"), |c| c.label().to_owned())
    }

    /// The name of network namespace `ino`, if it has one.
    pub fn netns(&self, ino: u32) -> Option<Rc<str>> {
        let mut inner = self.0.borrow_mut();
        Self::say_note(&mut inner);
        if let Some(n) = inner.netns.known(ino) {
            return Some(n);
        }
        inner.netns.get(ino, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_named_from_their_directory_and_host_is_host() {
        // Ordinary files stand for the bind mounts: their inodes are what `stat` gives.
        let dir = std::env::temp_dir().join(format!("tcptrace-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let touch = |name: &str| {
            let p = dir.join(name);
            std::fs::write(&p, b"").expect("file");
            u32::try_from(std::fs::metadata(&p).expect("stat").ino()).expect("small inode")
        };
        let blue = touch("blue");
        let t0 = Instant::now();
        let mut n = NetnsNames::at(dir.clone(), Some(4_026_531_840), t0);
        assert_eq!(n.get(blue, t0).as_deref(), Some("blue"));
        assert_eq!(n.get(4_026_531_840, t0).as_deref(), Some("host"));
        // Added later: found on a miss, at most one read a second.
        let red = touch("red");
        assert_eq!(n.get(red, t0 + Duration::from_millis(10)), None);
        assert_eq!(n.scans, 1);
        for i in 0..1000 {
            assert_eq!(n.get(7 + i, t0 + Duration::from_millis(20)), None);
        }
        assert_eq!(n.scans, 1, "a flood of unknown inodes reads nothing");
        assert_eq!(n.get(red, t0 + RESCAN_EVERY).as_deref(), Some("red"));
        assert_eq!(n.scans, 2);
        // Deleted while tracing: keeps its name.
        std::fs::remove_file(dir.join("blue")).expect("rm");
        assert_eq!(n.get(1, t0 + RESCAN_EVERY * 2), None);
        assert_eq!(n.get(blue, t0 + RESCAN_EVERY * 2).as_deref(), Some("blue"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cgroup_not_found_yet_is_found_once_the_rate_limit_allows_a_walk() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("tcptrace-names-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a.service")).expect("dir");
        let t0 = Instant::now();
        let names = Names::new(
            Cgroups::at(Some((dir.clone(), "/".to_owned())), t0),
            NetnsNames::at(PathBuf::new(), None, t0),
        );
        let a = std::fs::metadata(dir.join("a.service")).expect("a").ino();
        assert_eq!(names.cgroup_at(a, t0).expect("a").path, "/a.service");
        std::fs::create_dir(dir.join("b.service")).expect("b");
        let b = std::fs::metadata(dir.join("b.service")).expect("b").ino();
        // Asked for again and again within the second: no walk, no name yet...
        for ms in [1, 2, 500, 999] {
            assert!(names.cgroup_at(b, t0 + Duration::from_millis(ms)).is_none());
        }
        // ...and the miss was not remembered: after the second, the walk finds it.
        let got = names
            .cgroup_at(b, t0 + RESCAN_EVERY)
            .expect("found by the next walk");
        assert_eq!(got.path, "/b.service");
        assert_eq!(names.label(a), "a.service");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_names_ids_are_labelled_as_ids() {
        let n = Names::none();
        assert_eq!(n.label(0), "?");
        assert_eq!(n.label(1234), "cgroup 1234");
        assert!(n.cgroup(1234).is_none());
        assert!(n.netns(4_026_531_840).is_none());
    }
}
