//! The soak of `cargo xtask bench --soak SECS`: full churn (in a fresh network namespace,
//! the bench's load) beside `tcptrace watch --per none` for SECS seconds, the tracer's RSS
//! sampled every second. It prints a coarse curve, the least-squares slope in bytes per
//! minute over the whole run and over its second half (the first half includes warming up:
//! histograms, groups and hash tables reaching their working size), and calls the memory
//! flat when the second half grows by less than [`FLAT_BYTES`].

use std::{fmt::Write as _, thread, time::Duration};

use anyhow::{Context as _, Result};

use super::{Config, Env, churn::churn, load_avg, mib, start_tcptrace, stop_tcptrace};

/// The second half of a flat soak grows RSS by less than this (least-squares fit).
const FLAT_BYTES: f64 = 1024.0 * 1024.0;

/// Least-squares slope of `(secs, bytes)` points, in bytes per second.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

pub fn soak(env: &Env, secs: u64) -> Result<String> {
    let out_path = env.dir.join("soak.out");
    let summary_path = env.dir.join("soak.summary.json");
    let (tracer, scraper) = start_tcptrace(
        &env.bin,
        Config::None,
        &out_path,
        &summary_path,
        &env.ports,
        None,
    )?;
    let pid = tracer.pid();
    let load = env.load;
    eprintln!("xtask bench: soak of {secs}s beside watch --per none (RSS every second)");
    let churner = thread::spawn(move || churn(Duration::from_secs(secs), load));
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let start = std::time::Instant::now();
    while !churner.is_finished() {
        if let Some(rss) = super::proc::proc_status_kb(pid, "VmRSS") {
            samples.push((start.elapsed().as_secs_f64(), rss as f64));
        }
        thread::sleep(Duration::from_secs(1));
    }
    let c = churner
        .join()
        .map_err(|_| anyhow::anyhow!("the churn panicked"))?
        .context("the soak's churn")?;
    let (stats, _) = stop_tcptrace(tracer, scraper, &summary_path)?;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nsoak: {secs}s of churn beside watch --per none: {} connections ({:.0}/s), {} \
         transitions, {} lost, tracer {:.1} CPU-s, load average {}",
        c.connections,
        c.rate(),
        stats.transitions.map_or("?".to_owned(), |t| t.to_string()),
        stats.lost.map_or("?".to_owned(), |t| t.to_string()),
        stats.cpu_secs,
        load_avg()
    );
    let step = (samples.len() / 20).max(1);
    let curve: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|(t, b)| format!("{t:.0}s {}", mib(*b as u64)))
        .collect();
    let _ = writeln!(s, "  RSS MiB every {step}s: {}", curve.join(", "));
    let whole = slope(&samples) * 60.0;
    let half = &samples[samples.len() / 2..];
    let half_slope = slope(half) * 60.0;
    let half_secs = half.last().map_or(0.0, |l| l.0) - half.first().map_or(0.0, |f| f.0);
    let growth = half_slope / 60.0 * half_secs;
    let _ = writeln!(
        s,
        "  slope: {:.0} bytes/min over the whole run, {:.0} bytes/min over the second half \
         ({:.0} bytes over {half_secs:.0}s); peak RSS {} MiB",
        whole,
        half_slope,
        growth,
        stats.peak_rss_bytes.map_or("?".to_owned(), mib)
    );
    let _ = writeln!(
        s,
        "  {}: flat = second half grows by less than {} MiB",
        if growth < FLAT_BYTES {
            "FLAT"
        } else {
            "GROWING"
        },
        FLAT_BYTES / 1048576.0
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_fits_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&pts) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 6.0)]), 0.0);
    }
}
