//! `tcptrace serve`: the live run's figures as Prometheus metrics, for a fleet whose existing
//! Prometheus/Grafana stack scrapes every host (see README, "Run it on a fleet").
//!
//! A thin front end over the one live loop: [`LiveRun`] publishes a [`Snapshot`] once per
//! `--interval`, and an HTTP/1 server (hyper) on the same current-thread tokio runtime
//! answers `/metrics` from the newest one. A scrape never touches the pipeline: it clones an
//! `Arc` and encodes on tokio's blocking pool ([`metrics`] maps the snapshot; the crate
//! writes the format), so the event loop is never held up by a scraper. The listener is
//! bound before the eBPF program is loaded, so a taken port fails at once; SIGTERM/SIGINT
//! end the live loop, after which the server stops and the usual summary goes to stderr.

pub mod metrics;

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    cli::ServeArgs,
    config::Filter,
    exit::Exit,
    host,
    live::LiveRun,
    summary::{DetailOptions, Snapshot, SnapshotOptions},
};
use metrics::{BuildInfo, Format};

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `tcptrace serve`.
pub fn run(mut args: ServeArgs) -> Result<Exit> {
    let filter = Filter::from_cli(&args.filter, &mut args.sample).map_err(crate::exit::usage)?;
    crate::block_on(serve(args, filter))
}

async fn serve(args: ServeArgs, filter: Filter) -> Result<Exit> {
    let listener = bind(args.listen).await?;
    let addr = listener
        .local_addr()
        .context("reading the --listen address")?;
    if !addr.ip().is_loopback() {
        log::warn!(
            "serving metrics on {addr}, which is not loopback: anyone who can reach this host \
             there can read them (process names, ports); firewall it or use --listen 127.0.0.1:PORT"
        );
    }
    let mut live = LiveRun::start(&filter, args.ring_kib)?;
    live.sample(&args.sample)?;
    crate::add_test_hooks(&mut live, &args.summary);
    let opts = SnapshotOptions {
        top_n: args.summary.top,
        detail: Some(DetailOptions {
            ports: args.group_ports.clone().map(|p| p.0).unwrap_or_default(),
            processes: args.group_processes,
            workloads: args.group_workloads,
            close_wait_threshold: args.close_wait_threshold,
        }),
        dashboard: false,
    };
    let snapshots = live.publish(args.interval, opts);
    let build = Arc::new(BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel: host::kernel_release(),
    });
    let server = tokio::spawn(accept_loop(listener, snapshots, build));
    eprintln!("tcptrace: serving http://{addr}/metrics");
    let summary_out = crate::SummaryOut::open(&args.summary)?;
    crate::say_ready(&mut live, args.duration);
    let done = live.run(args.duration).await;
    server.abort();
    let done = done?;
    let mut exit = Exit::of(&done);
    summary_out.write(&done, &mut exit);
    crate::say_sink_error(&done, "the metrics");
    Ok(exit)
}

/// Binds `--listen`, with errors that say what to do.
async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let port = addr.port();
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "another process listens on port {port} (`ss -ltnp 'sport = :{port}'` shows which); \
                 stop it or pick another port with --listen {}:PORT",
                addr.ip()
            ),
            io::ErrorKind::AddrNotAvailable => format!(
                "{} is not an address of this host (`ip -brief address` lists them); use \
                 127.0.0.1, 0.0.0.0 or one of those",
                addr.ip()
            ),
            io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE; pick a port above 1023, e.g. \
                 --listen {}:10089",
                addr.ip()
            ),
            _ => "check the address given to --listen".to_owned(),
        };
        anyhow::anyhow!("cannot serve on --listen {addr}: {e}: {hint}")
    })
}

/// Accepts scrapers until the task is aborted; each connection is served on its own task.
async fn accept_loop(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    build: Arc<BuildInfo>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: say so, breathe, go on.
                log::warn!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshots = snapshots.clone();
        let build = Arc::clone(&build);
        tokio::spawn(async move {
            let svc = service_fn(move |req| respond(req, snapshots.clone(), Arc::clone(&build)));
            // A client that never finishes its request headers is dropped, not kept forever.
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("a metrics connection ended with an error: {e}");
            }
        });
    }
}

const INDEX: &str = "<!doctype html>\n<html><head><title>tcptrace</title></head><body>\n\
<h1>tcptrace</h1>\n<p>TCP connection life cycles of this host: handshake latency, teardown \
phases, resets, CLOSE_WAIT.</p>\n<p><a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn respond(
    req: Request<Incoming>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    build: Arc<BuildInfo>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match (get, req.uri().path()) {
        (true, "/metrics") => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let format = Format::from_accept(accept);
            let snap = Arc::clone(&snapshots.borrow());
            let encoded = tokio::task::spawn_blocking(move || {
                let t = std::time::Instant::now();
                let r = metrics::encode(snap, &build, format);
                if let Ok(b) = &r {
                    log::debug!(
                        "scrape: {format:?}, {} bytes encoded in {} us",
                        b.len(),
                        t.elapsed().as_micros()
                    );
                }
                r
            })
            .await;
            match encoded {
                Ok(Ok(body)) => reply(StatusCode::OK, format.content_type(), body),
                Ok(Err(e)) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("{e}\n"),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("encoding the metrics failed: {e}\n"),
                ),
            }
        }
        (true, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX),
        (false, "/" | "/metrics") => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n",
        ),
    })
}
