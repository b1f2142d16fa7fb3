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
//! Capabilities belong to threads: [`drop_all`] runs on the live loop's thread (a
//! current-thread runtime), and the threads the run starts later (the sampler, the output
//! writers) start without them. The one thread started before, a replay's recording reader,
//! drops its own once the file is open ([`drop_this_thread`]). Any other thread still
//! holding a capability when [`drop_all`] is done is a warning.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability};

/// What [`drop_all`] left in the permitted set (empty unless the probe needed them).
pub fn drop_all(still_works: impl FnOnce() -> bool) -> Result<Vec<Capability>> {
    let keep = drop_sets(still_works)?;
    let others = other_threads_with_capabilities();
    if others > 0 {
        log::warn!("dropped this thread's capabilities, but {others} other threads keep theirs");
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

/// Drops every capability of the calling thread (and sets its no_new_privs), for a helper
/// thread that reads untrusted input and needs no privilege once its file is open: the
/// replay's recording reader, started before the run drops the main thread's.
pub fn drop_this_thread() -> Result<()> {
    drop_sets(|| true).map(drop)
}

/// Threads of this process other than the caller whose permitted set is not empty (from
/// `/proc/self/task/*/status`; 0 where it cannot be read).
fn other_threads_with_capabilities() -> usize {
    // SAFETY: gettid has no arguments and cannot fail.
    let me = unsafe { libc::gettid() }.to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| t.file_name().to_str() != Some(me.as_str()))
        .filter(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapPrm:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .is_some_and(|v| v != 0)
            })
        })
        .count()
}

/// Empties the calling thread's sets but what the probe needs (see [`drop_all`]); returns
/// what it kept.
fn drop_sets(still_works: impl FnOnce() -> bool) -> Result<HashSet<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    let none = HashSet::new();
    if permitted.is_empty() {
        return Ok(none);
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
    Ok(keep)
}
