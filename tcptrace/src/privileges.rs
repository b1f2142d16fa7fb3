//! Least privilege: once the program is loaded and attached, the ring buffers are mapped,
//! /proc has been read for the owners of older sockets, the serve port is bound and every
//! output file is open, a live run needs no capability at all. [`drop_all`] then empties the
//! effective, permitted, inheritable and ambient sets (and the bounding set where
//! CAP_SETPCAP allows it) and sets no_new_privs, so a bug in the long-running part (the
//! decoder, the sinks, the HTTP server) cannot be turned into root's powers.
//!
//! The one thing the run still asks the kernel for is its loss counters (a BPF map lookup
//! on a map fd it holds). Since Linux 6.5 that needs no capability; older kernels with
//! `kernel.unprivileged_bpf_disabled` refuse every bpf() call without CAP_BPF (or
//! CAP_SYS_ADMIN). So before dropping for good, [`drop_all`] switches the effective set off
//! and asks the caller's probe whether the counters still read; if not, it keeps only those
//! two capabilities (and says so at debug level).
//!
//! Capabilities belong to threads: this must run on the only thread (the live loop runs on
//! a current-thread runtime and starts no threads); a second thread is a warning.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability};

/// What [`drop_all`] left in the permitted set (empty unless the probe needed them).
pub fn drop_all(still_works: impl FnOnce() -> bool) -> Result<Vec<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    let none = HashSet::new();
    if permitted.is_empty() {
        return Ok(Vec::new());
    }
    caps::set(None, CapSet::Effective, &none).context("clearing the effective set")?;
    let keep: HashSet<Capability> = if still_works() {
        HashSet::new()
    } else {
        [Capability::CAP_BPF, Capability::CAP_SYS_ADMIN]
            .into_iter()
            .filter(|c| permitted.contains(c))
            .collect()
    };
    // The bounding set limits what an execve could ever gain; dropping from it needs
    // CAP_SETPCAP (root has it; the systemd unit already bounds the set itself).
    if permitted.contains(&Capability::CAP_SETPCAP) {
        let setpcap = HashSet::from([Capability::CAP_SETPCAP]);
        caps::set(None, CapSet::Effective, &setpcap).context("raising CAP_SETPCAP")?;
        for c in caps::read(None, CapSet::Bounding).context("reading the bounding set")? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)
                    .with_context(|| format!("dropping {c} from the bounding set"))?;
            }
        }
        caps::set(None, CapSet::Effective, &none).context("clearing the effective set")?;
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::set(None, CapSet::Inheritable, &none).context("clearing the inheritable set")?;
    caps::set(None, CapSet::Permitted, &keep).context("narrowing the permitted set")?;
    caps::set(None, CapSet::Effective, &keep).context("setting the effective set")?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        log::debug!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads > 1 {
        log::warn!(
            "dropped this thread's capabilities, but {} other threads keep theirs",
            threads - 1
        );
    }
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    if kept.is_empty() {
        log::debug!("dropped every capability");
    } else {
        log::debug!(
            "dropped every capability but {kept:?}: this kernel refuses BPF map reads without them"
        );
    }
    Ok(kept)
}
