//! Root tests of `tcptrace serve`: a real Prometheus (Debian's /usr/bin/prometheus, a
//! temporary data directory, 1 s scrapes) scrapes the real tool while the test makes
//! connections of known number on loopback; the figures Prometheus stores must be those
//! numbers, and every PromQL expression of deploy/'s dashboard and rules must return data
//! from it. Debian's Prometheus 2.42 keeps only the native part of a histogram that has both
//! when native histograms are on, so two servers scrape: one with the feature flag (native)
//! and one without (classic buckets). Also: the number of series does not follow the number
//! of peers, and lost events show in the metrics while the ring overflows.
//!
//! Traffic only on 127.0.0.1, to ports these tests bound themselves; the tool is filtered on
//! those ports wherever counts are exact, so other tests' traffic does not disturb them.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    CloseOrder, IO_TIMEOUT, Tracer, churn_while_stopped, connect_and_close, connections,
    require_root,
};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// How long Prometheus may take to start, and to scrape what the test did.
const PROM_TIMEOUT: Duration = Duration::from_secs(40);

fn require_prometheus() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is needed: install it with `cargo xtask setup --test-packages` \
         (Debian package prometheus)"
    );
}

fn listener() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind listener")
}

/// A free loopback port (bound and released: Prometheus needs a number up front).
fn free_port() -> u16 {
    listener().local_addr().expect("addr").port()
}

/// Starts `tcptrace serve` on a free loopback port, traffic filtered to `port`, snapshots
/// every 0.2 s, with `extra` flags; returns it and where it serves.
fn serve_port(port: u16, extra: &[&str]) -> (Tracer, SocketAddr) {
    let port = port.to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--port",
        &port,
        "--interval",
        "0.2",
    ];
    args.extend_from_slice(extra);
    let tracer = Tracer::serve(&args);
    let addr = serving_addr(&tracer);
    (tracer, addr)
}

/// Where `tcptrace serve` says it serves.
fn serving_addr(t: &Tracer) -> SocketAddr {
    let line = t.stderr_line("serving http://").expect("serving line");
    let rest = line.split("http://").nth(1).expect("url");
    rest.trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// One HTTP/1.1 GET; returns (status code, body).
fn http_get(addr: SocketAddr, path: &str, accept: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to HTTP server");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, raw[split + 4..].to_vec())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics", "text/plain");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("utf-8 metrics")
}

/// The value of one sample line (`name{labels} value`) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one target every second; killed and its directory removed
/// on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
    native: bool,
}

impl Prometheus {
    fn start(target: SocketAddr, native: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-serve-prom-{}-{}-{}",
            std::process::id(),
            if native { "native" } else { "classic" },
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/tcptrace-rules.yml")
            .canonicalize()
            .expect("rules file");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        if native {
            cmd.arg("--enable-feature=native-histograms");
        }
        let child = cmd.spawn().expect("start prometheus");
        let p = Self {
            child,
            dir,
            addr,
            native,
        };
        let deadline = Instant::now() + PROM_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && http_get(addr, "/-/ready", "*/*").0 == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not get ready within {PROM_TIMEOUT:?}: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The result vector of an instant query (panics on a query error: a broken query).
    fn query(&self, expr: &str) -> Vec<Value> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
            "application/json",
        );
        let v: Value = serde_json::from_slice(&body).expect("query answer JSON");
        assert_eq!(status, 200, "query {expr:?} failed: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query that yields one sample (None if no data yet).
    fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        let v = r.first()?;
        let s = v["value"][1].as_str()?;
        s.parse().ok()
    }

    /// Waits until `expr` yields a value (e.g. a rate, which needs two scrapes).
    fn eventually(&self, expr: &str) -> f64 {
        let deadline = Instant::now() + PROM_TIMEOUT;
        loop {
            if let Some(v) = self.value(expr) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} Prometheus: no value for {expr} after {PROM_TIMEOUT:?}",
                if self.native { "native" } else { "classic" }
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `expr` equals `want` (Prometheus has scraped what the test did).
    fn wait_for(&self, expr: &str, want: f64) {
        let deadline = Instant::now() + PROM_TIMEOUT;
        loop {
            let got = self.value(expr);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} Prometheus: {expr} is {got:?}, not {want}, after {PROM_TIMEOUT:?}",
                if self.native { "native" } else { "classic" }
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every PromQL expression of the dashboard (Grafana's variables set to "all hosts", 1 m
/// rate windows) and of the rules (an alert's expression without its threshold).
fn deploy_queries() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/tcptrace.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            out.push(
                e.replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            );
        }
    }
    let rules = std::fs::read_to_string(root.join("prometheus/tcptrace-rules.yml")).expect("rules");
    for line in rules.lines() {
        if let Some(e) = line.trim().strip_prefix("expr: ") {
            let lhs = e.rsplit_once(" > ").map_or(e, |(l, _)| l);
            out.push(lhs.to_owned());
        }
    }
    assert!(out.len() > 20, "{} queries", out.len());
    out
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn prometheus_scrapes_real_numbers_and_every_deploy_query_returns_data() {
    require_root();
    require_prometheus();
    let l = listener();
    let port = l.local_addr().expect("addr").port();
    let (tracer, addr) = serve_port(port, &[]);
    let (status, index) = http_get(addr, "/", "text/html");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&index).contains("href=\"/metrics\""));
    assert_eq!(http_get(addr, "/nothing", "*/*").0, 404);

    let native = Prometheus::start(addr, true);
    let classic = Prometheus::start(addr, false);
    // Rates need a scrape from before the traffic.
    for p in [&native, &classic] {
        p.wait_for("up{job=\"tcptrace\"}", 1.0);
    }
    let n = 40u64;
    connections(&l, n as usize);
    // Ten transitions per connection pair, client and server socket together.
    for p in [&native, &classic] {
        p.wait_for("sum(tcptrace_transitions_total)", (10 * n) as f64);
        p.wait_for(
            "sum(tcptrace_connections_closed_total{kind=\"fin\"})",
            (2 * n) as f64,
        );
    }
    let nf = n as f64;
    for side in ["client", "server"] {
        for p in [&native, &classic] {
            assert_eq!(
                p.value(&format!(
                    "tcptrace_connections_opened_total{{side=\"{side}\"}}"
                )),
                Some(nf),
                "{side}"
            );
        }
        // Classic: the count of the histogram (the server side's SYN-ACK round trip is
        // readable on every kernel with BTF, which the root tests run on).
        assert_eq!(
            classic.value(&format!(
                "tcptrace_handshake_duration_seconds_count{{side=\"{side}\"}}"
            )),
            Some(nf),
            "classic {side} handshake count"
        );
        let expr = format!(
            "histogram_quantile(0.99, sum by (le) (rate(tcptrace_handshake_duration_seconds_bucket{{side=\"{side}\"}}[1m])))"
        );
        let q = classic.eventually(&expr);
        assert!(q.is_finite() && q > 0.0, "classic p99 {side} = {q}");
        // Native: the same count, and a quantile from the sparse buckets.
        assert_eq!(
            native.value(&format!(
                "histogram_count(tcptrace_handshake_duration_seconds{{side=\"{side}\"}})"
            )),
            Some(nf),
            "native {side} handshake count"
        );
        let q = native.eventually(&format!(
            "histogram_quantile(0.99, sum(rate(tcptrace_handshake_duration_seconds{{side=\"{side}\"}}[1m])))"
        ));
        assert!(q.is_finite() && q > 0.0, "native p99 {side} = {q}");
        eprintln!("p99 {side} handshake: {:.1} µs (native)", q * 1e6);
    }
    assert_eq!(
        classic.value("tcptrace_transitions_total{old=\"SYN_SENT\",new=\"ESTABLISHED\"}"),
        Some(nf)
    );
    // build_info in both formats (the dashboard lists hosts from it).
    for p in [&native, &classic] {
        let info = p.query("tcptrace_build_info");
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!(info[0]["metric"]["version"], env!("CARGO_PKG_VERSION"));
    }

    let queries = deploy_queries();
    // A transition counter appears at its first edge: its rate needs a second scrape.
    let mut empty = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for q in &queries {
        loop {
            if !native.query(q).is_empty() || !classic.query(q).is_empty() {
                break;
            }
            if Instant::now() > deadline {
                empty.push(q.clone());
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    assert!(
        empty.is_empty(),
        "queries of deploy/ that returned no data from either Prometheus:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "{} dashboard and rule queries all returned data",
        queries.len()
    );

    let scraped: f64 = classic
        .value("sum(tcptrace_transitions_total)")
        .expect("transitions");
    let out = tracer.stop();
    assert_eq!(
        out.summary["transitions"].as_f64(),
        Some(scraped),
        "the exit summary and the scraped counters agree"
    );
    assert_eq!(
        out.summary["overall"]["connections"].as_f64(),
        Some(2.0 * nf)
    );
    drop(l);
}

/// Series in a text exposition.
fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn series_stay_constant_over_5000_remote_ports() {
    require_root();
    let l = listener();
    let port = l.local_addr().expect("addr").port();
    let (tracer, addr) = serve_port(port, &[]);
    // A first round makes every edge of these connections' state machine appear.
    for order in [CloseOrder::ClientFirst, CloseOrder::ServerFirst] {
        connect_and_close(&l, order);
    }
    std::thread::sleep(Duration::from_millis(600));
    let before = scrape(addr);
    let mut remote_ports = std::collections::BTreeSet::new();
    let started = Instant::now();
    // Ephemeral ports come back once their TIME_WAIT is elsewhere: go on until 5000 differ.
    let mut made = 0u64;
    for i in 0..10_000 {
        if remote_ports.len() >= 5000 {
            break;
        }
        let order = if i % 2 == 0 {
            CloseOrder::ClientFirst
        } else {
            CloseOrder::ServerFirst
        };
        let (client_port, _) = connect_and_close(&l, order);
        remote_ports.insert(client_port);
        made += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "5000 loopback connections took over a minute"
        );
    }
    assert!(
        remote_ports.len() >= 5000,
        "{} distinct ports",
        remote_ports.len()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let m = scrape(addr);
        if sample(&m, "tcptrace_connections_opened_total{side=\"server\"}")
            == Some((made + 2) as f64)
        {
            break m;
        }
        assert!(Instant::now() < deadline, "the connections never showed");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        series(&before),
        series(&after),
        "series before:\n{before}\nafter:\n{after}"
    );
    assert!(
        !after.contains("port=\""),
        "no port labels without --group-ports"
    );
    eprintln!(
        "{} series before and after {made} connections from 5000 distinct ports",
        series(&after)
    );
    tracer.stop();
    drop(l);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn lost_events_show_in_the_metrics_while_the_ring_overflows() {
    require_root();
    let l = listener();
    let port = l.local_addr().expect("addr").port();
    // A 4 KiB ring holds about 46 records; a stopped reader cannot drain it.
    let (tracer, addr) = serve_port(port, &["--ring-kib", "4"]);
    assert_eq!(
        sample(&scrape(addr), "tcptrace_lost_events_total"),
        Some(0.0)
    );
    churn_while_stopped(&tracer, &l, 30);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let m = scrape(addr);
        if let Some(lost) = sample(&m, "tcptrace_lost_events_total")
            && lost > 0.0
        {
            break lost;
        }
        assert!(
            Instant::now() < deadline,
            "no lost events in the metrics:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = tracer.stop();
    assert_eq!(out.summary["lost"].as_f64(), Some(lost));
    eprintln!("ring of 4 KiB, reader stopped: {lost} lost events scraped");
    drop(l);
}

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn close_wait_ages_grow_without_events_and_named_groups_count() {
    require_root();
    let l = listener();
    let port = l.local_addr().expect("addr").port();
    let (tracer, addr) = serve_port(
        port,
        &[
            "--group-ports",
            &port.to_string(),
            "--group-processes",
            "2",
            "--close-wait-threshold",
            "0.5",
        ],
    );
    for order in [CloseOrder::ClientFirst, CloseOrder::ServerFirst] {
        connect_and_close(&l, order);
    }
    // A leak: the client closes, the server never does, so its socket waits in CLOSE_WAIT.
    let client =
        TcpStream::connect_timeout(&l.local_addr().expect("addr"), IO_TIMEOUT).expect("connect");
    let (leaked, _) = l.accept().expect("accept");
    drop(client);
    // No event comes for this socket any more; its age must still grow past the threshold.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = scrape(addr);
        if sample(&m, "tcptrace_close_wait_stuck_sockets") == Some(1.0) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no stuck CLOSE_WAIT socket:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let age = sample(&m, "tcptrace_close_wait_oldest_age_seconds").expect("age");
    assert!(age > 0.5, "oldest CLOSE_WAIT age {age}");
    assert_eq!(
        sample(&m, "tcptrace_tracked_sockets{state=\"CLOSE_WAIT\"}"),
        Some(1.0)
    );
    let p = port.to_string();
    assert_eq!(
        sample(
            &m,
            &format!("tcptrace_port_connections_opened_total{{port=\"{p}\",side=\"server\"}}")
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("tcptrace_port_connections_opened_total{{port=\"{p}\",side=\"client\"}}")
        ),
        Some(3.0)
    );
    // Two names own these sockets: the test thread (client side, in its own context) and
    // this process as /proc names it (the listener predates the run, so its children take
    // that owner). Both fit in --group-processes 2: nothing is folded into "other".
    let opened = |other: bool| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("tcptrace_process_connections_opened_total{"))
            .filter(|l| l.contains("process=\"other\"") == other)
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(opened(false), 6.0, "{m}");
    assert_eq!(opened(true), 0.0, "{m}");
    assert_eq!(
        sample(&m, "tcptrace_grouping_folded_connections_total"),
        Some(0.0)
    );
    drop(leaked);
    tracer.stop();
    drop(l);
}
