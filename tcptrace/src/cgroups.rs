//! cgroup ids to paths and workload names, without a container runtime's API.
//!
//! The kernel program reads a socket's cgroup v2 id, which is the inode number of the
//! cgroup's directory under the cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
//! on hybrid hosts; found in `/proc/self/mountinfo`). [`Cgroups`] walks that tree once to map
//! ids to paths, keeps what it found, and walks it again when an id is missing (a cgroup made
//! since), at most once per [`RESCAN_EVERY`], so a flood of unknown ids cannot make it walk
//! per event. A cgroup removed while tracing keeps the last path seen for it: entries are
//! never dropped. The walk reads directory entries only (`d_ino` is the kernfs id, no `stat`).
//!
//! [`workload`] derives a workload from a path where the path shows one: a container of
//! docker, containerd, cri-o or podman (systemd `*.scope` units or the cgroupfs layouts), a
//! Kubernetes pod (pod UID and QoS class, from both kubelet cgroup drivers' layouts), else
//! the deepest systemd unit (`foo.service`, `user@1000.service`, `session-3.scope`,
//! `app.slice`). It is a pure function of the path, tested on real-looking paths.
//!
//! This is the output layer's business (sinks, summary): the core keeps cgroup ids only, so
//! replaying a recording gives the same figures wherever it is replayed.

use std::{
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;
use serde::Serialize;

/// Shortest time between two walks of the cgroup tree caused by unknown ids.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Most directories one walk visits (a bound on a runaway tree; hosts have thousands).
const MAX_DIRS: usize = 200_000;

/// What a workload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A Kubernetes pod (the container, when the path names one, is in `container`).
    Pod,
    /// A systemd unit: a service, scope or slice.
    Systemd,
}

/// A workload derived from a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub kind: Kind,
    /// The name tcptrace groups and shows by: `docker/0123456789ab` (runtime and the first 12
    /// characters of the container id), `k8s/burstable/<pod uid>`, or the systemd unit name.
    pub name: String,
    /// The full container id, where the path names a container.
    pub container: Option<String>,
    /// Kubernetes only: the pod UID and QoS class (guaranteed, burstable, besteffort).
    pub pod_uid: Option<String>,
    pub qos: Option<&'static str>,
}

/// A container id in a path: at least 12 lowercase hex digits.
fn container_id(s: &str) -> Option<&str> {
    (s.len() >= 12
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(s)
}

/// The runtime and id of a container segment: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope` (systemd driver), `libpod-<id>` (podman's cgroupfs
/// layout). conmon's own scopes (`crio-conmon-`, `libpod-conmon-`) are not containers.
fn container_segment(seg: &str) -> Option<(Kind, &str)> {
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    for (prefix, kind) in [
        ("docker-", Kind::Docker),
        ("cri-containerd-", Kind::Containerd),
        ("crio-", Kind::CriO),
        ("libpod-", Kind::Podman),
    ] {
        if let Some(id) = base.strip_prefix(prefix).and_then(container_id) {
            return Some((kind, id));
        }
    }
    None
}

fn kind_prefix(k: Kind) -> &'static str {
    match k {
        Kind::Docker => "docker",
        Kind::Containerd => "containerd",
        Kind::CriO => "crio",
        Kind::Podman => "podman",
        Kind::Pod => "k8s",
        Kind::Systemd => "systemd",
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The pod of a segment: `kubepods[-besteffort|-burstable]-pod<uid>.slice` (systemd driver,
/// the uid's dashes written as underscores; kind's `kubelet-kubepods-...` too) or
/// `pod<uid>` after a `kubepods` segment (cgroupfs driver). Returns (uid, qos).
fn pod_segment(seg: &str, after_kubepods: Option<&str>) -> Option<(String, &'static str)> {
    let qos_of = |q: &str| match q {
        "besteffort" => Some("besteffort"),
        "burstable" => Some("burstable"),
        "" => Some("guaranteed"),
        _ => None,
    };
    if let Some(rest) = seg.strip_suffix(".slice")
        && let Some(at) = rest.find("kubepods")
    {
        let rest = &rest[at + "kubepods".len()..];
        let (qos, pod) = rest.split_once("-pod")?;
        let qos = qos_of(qos.strip_prefix('-').unwrap_or(qos))?;
        return (!pod.is_empty()).then(|| (pod.replace('_', "-"), qos));
    }
    let uid = seg.strip_prefix("pod").filter(|u| !u.is_empty())?;
    let qos = qos_of(after_kubepods?)?;
    Some((uid.to_owned(), qos))
}

/// A systemd unit name: `*.service`, `*.scope` or `*.slice` (not the root slice `-.slice`).
fn systemd_unit(seg: &str) -> bool {
    (seg.ends_with(".service") || seg.ends_with(".scope") || seg.ends_with(".slice"))
        && seg != "-.slice"
}

/// The workload a cgroup path shows, if any (see the module doc for the rules).
pub fn workload(path: &str) -> Option<Workload> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // A container: the deepest segment naming one, or cgroupfs `docker/<id>`.
    let mut container = None;
    for (i, seg) in segs.iter().enumerate().rev() {
        if let Some(c) = container_segment(seg) {
            container = Some((i, c.0, c.1));
            break;
        }
        if i > 0
            && let Some(id) = container_id(seg)
        {
            let parent = segs[i - 1];
            if parent == "docker" {
                container = Some((i, Kind::Docker, id));
                break;
            }
            // cgroupfs kubelet: kubepods/[qos/]pod<uid>/<container id> (runtime unknown).
            if parent.starts_with("pod") && segs[..i].contains(&"kubepods") {
                container = Some((i, Kind::Containerd, id));
                break;
            }
        }
    }
    // A Kubernetes pod above it (or alone: the pod's own cgroup).
    let mut pod = None;
    for (i, seg) in segs.iter().enumerate() {
        let after = match i {
            0 => None,
            _ if segs[i - 1] == "kubepods" => Some(""),
            _ if i >= 2 && segs[i - 2] == "kubepods" => Some(segs[i - 1]),
            _ => None,
        };
        if let Some(p) = pod_segment(seg, after) {
            pod = Some(p);
        }
    }
    if let Some((uid, qos)) = pod {
        return Some(Workload {
            kind: Kind::Pod,
            name: format!("k8s/{qos}/{uid}"),
            container: container.map(|c| c.2.to_owned()),
            pod_uid: Some(uid),
            qos: Some(qos),
        });
    }
    if let Some((_, kind, id)) = container {
        return Some(Workload {
            kind,
            name: format!("{}/{}", kind_prefix(kind), short(id)),
            container: Some(id.to_owned()),
            pod_uid: None,
            qos: None,
        });
    }
    let unit = segs.iter().rev().find(|s| systemd_unit(s))?;
    Some(Workload {
        kind: Kind::Systemd,
        name: (*unit).to_owned(),
        container: None,
        pod_uid: None,
        qos: None,
    })
}

/// A cgroup's path (relative to the cgroup2 root, starting with `/`) and its workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    pub workload: Option<Workload>,
}

impl Cgroup {
    fn new(path: String) -> Self {
        let workload = workload(&path);
        Self { path, workload }
    }

    /// What a group or a text column calls it: the workload's name, else the path.
    pub fn label(&self) -> &str {
        self.workload.as_ref().map_or(&self.path, |w| &w.name)
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount in a `/proc/self/mountinfo` text: (mount point, the cgroup the mount
/// shows as its root). `/sys/fs/cgroup` is preferred, then `/sys/fs/cgroup/unified`, then
/// any other.
pub fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        found.push((PathBuf::from(unescape(f[4])), unescape(f[3])));
    }
    let rank = |p: &Path| match p.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    };
    found.sort_by_key(|(p, _)| rank(p));
    found.into_iter().next()
}

/// cgroup id -> path and workload, with the walks and the cache the module doc describes.
pub struct Cgroups {
    /// The cgroup2 mount, and the path of the cgroup it shows as its root.
    mount: Option<(PathBuf, String)>,
    by_id: FxHashMap<u64, Rc<Cgroup>>,
    last_walk: Option<Instant>,
    /// Walks made (the first included), for tests and the rate limit's check.
    pub walks: u64,
}

impl Cgroups {
    /// The host's cgroups: finds the cgroup2 mount in `/proc/self/mountinfo` and walks it.
    /// Without cgroup v2 it warns once and every lookup misses (ids are still shown).
    pub fn system(now: Instant) -> Self {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        if mount.is_none() {
            log::warn!(
                "no cgroup v2 (cgroup2) file system is mounted, so cgroup ids cannot be named: \
                 cgroup paths and workload names are left out (the ids are still shown); mount \
                 it (`mount -t cgroup2 none /sys/fs/cgroup`) or boot with systemd's unified \
                 hierarchy"
            );
        }
        Self::at(mount, now)
    }

    /// The cgroups under `mount`: a mount point (a cgroup2 mount, or a test's fake tree) and
    /// the path of the cgroup it shows as its root (mountinfo's root field: `/`, or a
    /// sub-cgroup in a container), which prefixes every path.
    pub fn at(mount: Option<(PathBuf, String)>, now: Instant) -> Self {
        let mut c = Self {
            mount,
            by_id: FxHashMap::default(),
            last_walk: None,
            walks: 0,
        };
        c.walk(now);
        c
    }

    /// Fixed paths and no mount (tests of the outputs).
    #[cfg(test)]
    pub fn fixed(paths: &[(u64, &str)]) -> Self {
        let mut c = Self::none();
        for (id, p) in paths {
            c.by_id.insert(*id, Rc::new(Cgroup::new((*p).to_owned())));
        }
        c
    }

    /// No cgroup names (a recording replayed on another host).
    pub fn none() -> Self {
        Self::at(None, Instant::now())
    }

    /// Whether a cgroup2 mount was found.
    #[cfg(test)]
    pub fn mounted(&self) -> bool {
        self.mount.is_some()
    }

    /// The cgroup of `id`, walking the tree again on a miss unless it was walked less than
    /// [`RESCAN_EVERY`] before `now`.
    /// The cgroup of `id` if already known (no walk, no clock).
    pub fn known(&self, id: u64) -> Option<Rc<Cgroup>> {
        self.by_id.get(&id).cloned()
    }

    pub fn get(&mut self, id: u64, now: Instant) -> Option<Rc<Cgroup>> {
        if let Some(c) = self.by_id.get(&id) {
            return Some(Rc::clone(c));
        }
        if self.mount.is_none()
            || self
                .last_walk
                .is_some_and(|t| now.saturating_duration_since(t) < RESCAN_EVERY)
        {
            return None;
        }
        self.walk(now);
        self.by_id.get(&id).cloned()
    }

    /// Walks the tree, adding (or renaming) every cgroup found; cgroups no longer there keep
    /// their entries.
    fn walk(&mut self, now: Instant) {
        let Some((mount, root_path)) = &self.mount else {
            return;
        };
        self.last_walk = Some(now);
        self.walks += 1;
        let base = root_path.trim_end_matches('/');
        let path_of = |rel: &str| {
            if rel.is_empty() {
                if base.is_empty() {
                    "/".to_owned()
                } else {
                    base.to_owned()
                }
            } else {
                format!("{base}/{rel}")
            }
        };
        if let Ok(m) = std::fs::metadata(mount) {
            use std::os::unix::fs::MetadataExt as _;
            self.by_id
                .insert(m.ino(), Rc::new(Cgroup::new(path_of(""))));
        }
        let mut stack = vec![(mount.clone(), String::new())];
        let mut dirs = 0;
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                dirs += 1;
                if dirs > MAX_DIRS {
                    return;
                }
                use std::os::unix::fs::DirEntryExt as _;
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let path = path_of(&rel);
                let known = self.by_id.get(&e.ino()).is_some_and(|c| c.path == path);
                if !known {
                    self.by_id.insert(e.ino(), Rc::new(Cgroup::new(path)));
                }
                stack.push((e.path(), rel));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use rstest::rstest;

    use super::*;

    const ID: &str = "4f2c9a0b7e1d3c5a6b8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b";
    const UID: &str = "9a8b7c6d-1234-4e5f-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "9a8b7c6d_1234_4e5f_8a9b_0c1d2e3f4a5b";

    fn w(path: &str) -> Option<(Kind, String, Option<String>, Option<&'static str>)> {
        workload(path).map(|w| (w.kind, w.name, w.container, w.qos))
    }

    #[rstest]
    #[case::docker_systemd(&format!("/system.slice/docker-{ID}.scope"), Kind::Docker, "docker/4f2c9a0b7e1d", Some(ID))]
    #[case::docker_cgroupfs(&format!("/docker/{ID}"), Kind::Docker, "docker/4f2c9a0b7e1d", Some(ID))]
    #[case::docker_rootless(&format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"), Kind::Docker, "docker/4f2c9a0b7e1d", Some(ID))]
    #[case::containerd(&format!("/system.slice/cri-containerd-{ID}.scope"), Kind::Containerd, "containerd/4f2c9a0b7e1d", Some(ID))]
    #[case::crio(&format!("/machine.slice/crio-{ID}.scope"), Kind::CriO, "crio/4f2c9a0b7e1d", Some(ID))]
    #[case::podman(&format!("/machine.slice/libpod-{ID}.scope"), Kind::Podman, "podman/4f2c9a0b7e1d", Some(ID))]
    #[case::podman_nested(&format!("/machine.slice/libpod-{ID}.scope/container"), Kind::Podman, "podman/4f2c9a0b7e1d", Some(ID))]
    #[case::podman_cgroupfs(&format!("/libpod_parent/libpod-{ID}"), Kind::Podman, "podman/4f2c9a0b7e1d", Some(ID))]
    #[case::service("/system.slice/nginx.service", Kind::Systemd, "nginx.service", None)]
    #[case::user_manager(
        "/user.slice/user-1000.slice/user@1000.service/init.scope",
        Kind::Systemd,
        "init.scope",
        None
    )]
    #[case::user_service(
        "/user.slice/user-1000.slice/user@1000.service/app.slice/pipewire.service",
        Kind::Systemd,
        "pipewire.service",
        None
    )]
    #[case::user_at(
        "/user.slice/user-1000.slice/user@1000.service",
        Kind::Systemd,
        "user@1000.service",
        None
    )]
    #[case::session(
        "/user.slice/user-1000.slice/session-3.scope",
        Kind::Systemd,
        "session-3.scope",
        None
    )]
    #[case::app_slice(
        "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice",
        Kind::Systemd,
        "app-org.gnome.Terminal.slice",
        None
    )]
    #[case::below_a_service(
        "/system.slice/tcptrace-lab.slice/tcptrace-lab-srv.service/worker",
        Kind::Systemd,
        "tcptrace-lab-srv.service",
        None
    )]
    #[case::conmon_is_not_a_container(&format!("/machine.slice/libpod-conmon-{ID}.scope"), Kind::Systemd, &format!("libpod-conmon-{ID}.scope"), None)]
    fn runtimes_and_units(
        #[case] path: &str,
        #[case] kind: Kind,
        #[case] name: &str,
        #[case] container: Option<&str>,
    ) {
        assert_eq!(
            w(path),
            Some((kind, name.to_owned(), container.map(str::to_owned), None)),
            "{path}"
        );
    }

    #[rstest]
    #[case::systemd_burstable(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"), "burstable", Some(ID))]
    #[case::systemd_besteffort(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"), "besteffort", Some(ID))]
    #[case::systemd_guaranteed(&format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"), "guaranteed", Some(ID))]
    #[case::systemd_pod_itself(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"), "burstable", None)]
    #[case::kind_nested(&format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"), "besteffort", Some(ID))]
    #[case::cgroupfs_burstable(&format!("/kubepods/burstable/pod{UID}/{ID}"), "burstable", Some(ID))]
    #[case::cgroupfs_besteffort(&format!("/kubepods/besteffort/pod{UID}/{ID}"), "besteffort", Some(ID))]
    #[case::cgroupfs_guaranteed(&format!("/kubepods/pod{UID}/{ID}"), "guaranteed", Some(ID))]
    fn kubernetes_pods(#[case] path: &str, #[case] qos: &'static str, #[case] ctr: Option<&str>) {
        let got = workload(path).unwrap_or_else(|| panic!("no workload in {path}"));
        assert_eq!(got.kind, Kind::Pod, "{path}");
        assert_eq!(got.name, format!("k8s/{qos}/{UID}"), "{path}");
        assert_eq!(got.pod_uid.as_deref(), Some(UID));
        assert_eq!(got.qos, Some(qos));
        assert_eq!(got.container.as_deref(), ctr, "{path}");
    }

    #[rstest]
    #[case::root("/")]
    #[case::plain_dir("/mygroup/sub")]
    #[case::root_slice("/-.slice")]
    #[case::short_hex("/docker/abc123")]
    #[case::uppercase_is_no_id("/docker/4F2C9A0B7E1D3C5A")]
    #[case::not_kube("/kubepods-ish/podcast")]
    fn paths_without_a_workload(#[case] path: &str) {
        assert_eq!(w(path), None, "{path}");
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let hybrid = "\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
26 24 0:24 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned()))
        );
        let unified = "\
35 24 0:30 / /mnt/other\\040cg rw - cgroup2 cgroup2 rw
29 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            cgroup2_mount(unified),
            Some((PathBuf::from("/sys/fs/cgroup"), "/".to_owned()))
        );
        let elsewhere = "35 24 0:30 /docker/abc /mnt/other\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(elsewhere),
            Some((PathBuf::from("/mnt/other cg"), "/docker/abc".to_owned()))
        );
        let v1_only = "28 26 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
    }

    /// A fake cgroup tree in a temp directory: ordinary directories have inodes as cgroup
    /// directories do, so the resolver's walk, cache and rescans run as on a real mount.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("tcptrace-cgroups-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
        fn mkdir(&self, rel: &str) -> u64 {
            let p = self.0.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::metadata(&p).expect("stat").ino()
        }
        fn cgroups(&self, root: &str, now: Instant) -> Cgroups {
            Cgroups::at(Some((self.0.clone(), root.to_owned())), now)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ids_map_to_paths_and_removed_cgroups_keep_theirs() {
        let t = Tree::new("walk");
        let svc = t.mkdir("system.slice/nginx.service");
        let ctr = t.mkdir(&format!("system.slice/docker-{ID}.scope"));
        let root = std::fs::metadata(&t.0).expect("root").ino();
        let t0 = Instant::now();
        let mut c = t.cgroups("/", t0);
        assert_eq!(c.walks, 1);
        let got = c.get(svc, t0).expect("service");
        assert_eq!(got.path, "/system.slice/nginx.service");
        assert_eq!(got.label(), "nginx.service");
        assert_eq!(c.get(ctr, t0).expect("ctr").label(), "docker/4f2c9a0b7e1d");
        assert_eq!(c.get(root, t0).expect("root").path, "/");
        assert_eq!(c.get(root, t0).expect("root").label(), "/");

        // Made after the first walk: found by a rescan on the miss.
        let t1 = t0 + RESCAN_EVERY;
        let late = t.mkdir("system.slice/late.service");
        assert_eq!(
            c.get(late, t1).expect("late").path,
            "/system.slice/late.service"
        );
        assert_eq!(c.walks, 2);

        // Removed while tracing: keeps its last path through later walks.
        std::fs::remove_dir(t.0.join("system.slice/nginx.service")).expect("rmdir");
        let t2 = t1 + RESCAN_EVERY;
        assert!(c.get(u64::MAX, t2).is_none());
        assert_eq!(c.walks, 3);
        assert_eq!(
            c.get(svc, t2).expect("kept").path,
            "/system.slice/nginx.service"
        );
    }

    #[test]
    fn a_flood_of_unknown_ids_walks_at_most_once_a_second() {
        let t = Tree::new("flood");
        t.mkdir("a.slice");
        let t0 = Instant::now();
        let mut c = t.cgroups("/", t0);
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 150); // 1.5 s of unknown ids
            assert!(c.get(u64::MAX - i, now).is_none());
        }
        assert_eq!(c.walks, 2, "the first walk and one a second later");
        // Within the limit a new cgroup is not found yet; after it, it is.
        let t_late = t0 + Duration::from_millis(1600);
        let b = t.mkdir("b.slice");
        assert!(c.get(b, t_late).is_none());
        assert_eq!(c.get(b, t_late + RESCAN_EVERY).expect("b").path, "/b.slice");
    }

    #[test]
    fn a_mount_showing_a_sub_cgroup_gives_whole_paths() {
        let t = Tree::new("nsroot");
        let id = t.mkdir("app.service");
        let mut c = t.cgroups(&format!("/docker/{ID}"), Instant::now());
        let got = c.get(id, Instant::now()).expect("found");
        assert_eq!(got.path, format!("/docker/{ID}/app.service"));
        assert_eq!(got.label(), "docker/4f2c9a0b7e1d");
    }

    #[test]
    fn without_cgroup_v2_lookups_miss_and_never_walk() {
        let mut c = Cgroups::none();
        assert!(!c.mounted());
        assert!(c.get(1, Instant::now() + RESCAN_EVERY * 5).is_none());
        assert_eq!(c.walks, 0);
    }
}
