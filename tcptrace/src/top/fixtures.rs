//! Snapshots for the dashboard's tests, made the way a live run makes them: hand-written
//! events through the real pipeline and the [`Recent`] sink, then [`Snapshot::build_with`] at a
//! chosen event time. Test-only.

use std::{cell::RefCell, net::SocketAddr, rc::Rc, time::Duration};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers};

use crate::{
    counters::Counters,
    decode::{Comm, Event, Family, Kind, Owner, OwnerSource, TcpState},
    pipeline::Pipeline,
    recent::Recent,
    sink::Shared,
    summary::{Snapshot, SnapshotOptions},
};

/// A plain key press, as crossterm reports it.
pub fn key(c: KeyCode) -> KeyEvent {
    KeyEvent {
        code: c,
        modifiers: KeyModifiers::NONE,
        kind: KeyEventKind::Press,
        state: KeyEventState::NONE,
    }
}

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// The event time the snapshots are built at.
pub const NOW: u64 = 1000 * S;

fn opts() -> SnapshotOptions {
    SnapshotOptions {
        top_n: 5,
        dashboard: true,
        ..SnapshotOptions::default()
    }
}

/// Before anything happened.
pub fn empty() -> Snapshot {
    Snapshot::empty(&opts())
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("fixture address {s}: {e}"))
}

fn owner(pid: u32, comm: &str) -> Option<Owner> {
    Some(Owner {
        tgid: pid,
        pid,
        comm: Comm::from_str_lossy(comm),
        source: OwnerSource::Current,
    })
}

struct Gen {
    p: Pipeline,
    sock: u64,
}

impl Gen {
    fn state(
        &mut self,
        ts: u64,
        local: &str,
        remote: &str,
        o: Option<Owner>,
        t: (TcpState, TcpState),
    ) {
        self.p.push_ordered(Event {
            ts_ns: ts,
            sock: self.sock,
            family: Family::V4,
            local: addr(local),
            remote: addr(remote),
            owner: o,
            kind: Kind::State { old: t.0, new: t.1 },
            srtt_us: (t == (TcpState::SynRecv, TcpState::Established)).then_some(250),
            ident: Default::default(),
            close: None,
        });
    }

    /// A client connection opened at `t`, closed by this host.
    fn client(&mut self, t: u64, lport: u16, remote: &str, hs_us: u64, o: Option<Owner>) {
        use TcpState::*;
        self.sock += 1;
        let local = format!("10.0.0.1:{lport}");
        self.state(t, "10.0.0.1:0", remote, o, (Close, SynSent));
        let t1 = t + hs_us * 1000;
        self.state(t1, &local, remote, o, (SynSent, Established));
        self.state(t1 + 20 * MS, &local, remote, o, (Established, FinWait1));
        self.state(t1 + 21 * MS, &local, remote, o, (FinWait1, FinWait2));
        self.state(t1 + 22 * MS, &local, remote, o, (FinWait2, Close));
    }

    /// A server connection whose peer closed at `closed_at`, still in CLOSE_WAIT.
    fn leak(&mut self, closed_at: u64, remote: &str, o: Option<Owner>) {
        use TcpState::*;
        self.sock += 1;
        let local = "10.0.0.1:8080";
        self.state(closed_at - 50 * MS, local, remote, o, (Listen, SynRecv));
        self.state(
            closed_at - 50 * MS,
            local,
            remote,
            o,
            (SynRecv, Established),
        );
        self.state(closed_at, local, remote, o, (Established, CloseWait));
    }
}

/// Traffic to three remote ports, three CLOSE_WAIT sockets of different ages (one younger
/// than the default 5 s threshold), and two sockets from /proc at start (one in CLOSE_WAIT).
fn busy_with(counters: Counters) -> Snapshot {
    let recent = Rc::new(RefCell::new(Recent::default()));
    let mut g = Gen {
        p: Pipeline::new(vec![Box::new(Shared(Rc::clone(&recent)))]),
        sock: 0xffff_8880_0000_0000,
    };
    g.p.set_prior_sockets([
        (
            addr("10.0.0.1:8080"),
            addr("10.0.0.8:40000"),
            TcpState::CloseWait,
            owner(4242, "legacy"),
        ),
        (
            addr("10.0.0.1:22"),
            addr("10.0.0.3:50000"),
            TcpState::Established,
            owner(1, "sshd"),
        ),
    ]);
    g.leak(NOW - 120 * S, "10.0.0.5:41000", owner(300, "java"));
    let mut lport = 40_000;
    for (i, (port, n, hs_us, comm)) in [
        (443, 5, 800, "curl"),
        (5432, 3, 150, "psql"),
        (80, 1, 30_000, "wget"),
    ]
    .into_iter()
    .enumerate()
    {
        for k in 0..n {
            lport += 1;
            let t = NOW - (9 - k - i as u64) * S;
            let remote = format!("10.0.0.9:{port}");
            g.client(
                t,
                lport,
                &remote,
                hs_us * (k + 1),
                owner(100 + i as u32, comm),
            );
        }
    }
    g.leak(NOW - 9 * S, "10.0.0.7:52000", owner(200, "nginx"));
    g.leak(NOW - 2 * S, "10.0.0.6:53000", owner(200, "nginx"));
    let r = recent.borrow();
    Snapshot::build_with(
        &g.p,
        &counters,
        &opts(),
        Duration::from_secs(42),
        NOW,
        Some(&r),
    )
}

/// A busy host without loss.
pub fn busy() -> Snapshot {
    busy_with(Counters {
        submitted: 60,
        ..Counters::default()
    })
}

/// The same with lost events.
pub fn lossy() -> Snapshot {
    busy_with(Counters {
        submitted: 60,
        lost: 17,
        ..Counters::default()
    })
}
