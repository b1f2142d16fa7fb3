//! Snapshots for the dashboard's tests, made the way a live run makes them: hand-written
//! events through the real pipeline and the [`Recent`] sink, then [`Snapshot::build_with`] at a
//! chosen event time. Test-only.

use std::{cell::RefCell, net::SocketAddr, rc::Rc, time::Duration};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyEventState, KeyModifiers};

use crate::{
    counters::Counters,
    decode::{CloseStats, Comm, Event, Family, Ident, Kind, Owner, OwnerSource, TcpState},
    names::Names,
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
    /// The identity the kernel reads on a socket's first event (owners carries it on).
    ident: Ident,
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
            ident: if matches!(t.0, TcpState::Close | TcpState::Listen) {
                self.ident
            } else {
                Ident::default()
            },
            // Counters only where the fixture gives identities (the older fixtures predate
            // both): SYN and FIN count one each in sequence space.
            close: (t.1 == TcpState::Close && self.ident.cgroup.is_some()).then_some(CloseStats {
                bytes_acked: 1 + 1000 + 1,
                bytes_received: 200 + 1,
                retrans: 0,
                srtt_us: 100,
            }),
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
        ident: Ident::default(),
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
        &crate::names::Names::none(),
    )
}

/// The cgroup ids of [`workloads`] and the paths [`workload_names`] gives them: two
/// containers of one pod, a systemd service, and a docker container.
pub const POD_A: u64 = 101;
pub const POD_B: u64 = 102;
pub const SERVICE: u64 = 103;
pub const DOCKER: u64 = 104;

/// Names for [`workloads`]' cgroups, as `Names` would find them on the host.
pub fn workload_names() -> Names {
    Names::fixed(
        &[
            (
                POD_A,
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9a8b7c6d_1234_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.scope",
            ),
            (
                POD_B,
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9a8b7c6d_1234_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.scope",
            ),
            (SERVICE, "/system.slice/nginx.service"),
            (
                DOCKER,
                "/system.slice/docker-4f2c9a0b7e1d3c5a6b8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b.scope",
            ),
        ],
        &[],
    )
}

/// Connections of four cgroups (see [`POD_A`]): the pod's two containers call out (3 and 2
/// connections), the docker container once, and the service has two sockets in CLOSE_WAIT;
/// each closed connection sent 1000 and received 200 payload bytes.
pub fn workloads(names: &Names) -> (Pipeline, Snapshot) {
    let recent = Rc::new(RefCell::new(Recent::default()));
    let mut g = Gen {
        p: Pipeline::new(vec![Box::new(Shared(Rc::clone(&recent)))]),
        sock: 0xffff_8880_0000_0000,
        ident: Ident::default(),
    };
    let mut lport = 41_000;
    for (cgroup, n, port, comm) in [
        (POD_A, 3, 443, "app"),
        (POD_B, 2, 5432, "sidecar"),
        (DOCKER, 1, 80, "redis"),
    ] {
        g.ident = Ident {
            cgroup: Some(cgroup),
            netns: Some(4_026_532_000),
        };
        for k in 0..n {
            lport += 1;
            g.client(
                NOW - (8 - k) * S,
                lport,
                &format!("10.0.0.9:{port}"),
                500 * (k + 1),
                owner(100 + cgroup as u32, comm),
            );
        }
    }
    g.ident = Ident {
        cgroup: Some(SERVICE),
        netns: None,
    };
    g.leak(NOW - 9 * S, "10.0.0.7:52000", owner(200, "nginx"));
    g.leak(NOW - 2 * S, "10.0.0.6:53000", owner(200, "nginx"));
    let snap = {
        let r = recent.borrow();
        Snapshot::build_with(
            &g.p,
            &Counters::default(),
            &opts(),
            Duration::from_secs(42),
            NOW,
            Some(&r),
            names,
        )
    };
    (g.p, snap)
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
