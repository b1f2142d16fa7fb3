//! `index.html`: the summary table and every chart, in one file to open.

use std::fmt::Write as _;

use super::{Chart, Input, fmt_count};
use crate::{aggregate::row_names, summary::GroupSummary};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn group_table(out: &mut String, g: &GroupSummary) {
    let closes: Vec<String> = g.closes.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        out,
        "<h3>{}</h3>\n<p>{} connections{}; resets sent {}, received {}; SYN retransmits {}, SYN-ACK retransmits {}; TIME_WAIT entries {}</p>",
        esc(&g.key),
        fmt_count(g.connections),
        if closes.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&closes.join(", ")))
        },
        g.resets_sent,
        g.resets_received,
        g.syn_retransmits,
        g.synack_retransmits,
        g.time_wait_entries
    );
    out.push_str("<table>\n<tr><th>(ms)</th><th>count</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>\n");
    for name in row_names() {
        match g.rows.get(name) {
            Some(q) => {
                let _ = writeln!(
                    out,
                    "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    fmt_count(q.count),
                    ms(q.min_us),
                    ms(q.p50_us),
                    ms(q.p90_us),
                    ms(q.p99_us),
                    ms(q.max_us)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "<tr class=\"empty\"><td>{name}</td><td>0</td><td></td><td></td><td></td><td></td><td></td></tr>"
                );
            }
        }
    }
    out.push_str("</table>\n");
}

/// The page.
pub fn html(input: &Input<'_>, charts: &[Chart]) -> String {
    let s = input.summary;
    let mut out = String::with_capacity(16 * 1024);
    let _ = writeln!(
        out,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tcptrace report</title>
<style>
body {{ font-family: sans-serif; background: #fcfcf9; color: #222; margin: 2em auto; max-width: 1240px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.7em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.empty td {{ color: #999; }}
figure {{ margin: 2em 0; }}
img {{ width: 100%; max-width: 1200px; border: 1px solid #ddd; }}
.warn {{ color: #b00; font-weight: bold; }}
</style>
</head>
<body>
<h1>tcptrace report</h1>
<p>{}</p>
<h2>Summary</h2>
<p>{} transitions, {} events, {} lost, {} undecodable, {} filtered in the kernel</p>"#,
        esc(input.subtitle),
        fmt_count(s.transitions),
        fmt_count(s.events),
        fmt_count(s.lost),
        fmt_count(s.undecodable),
        fmt_count(s.filtered)
    );
    if s.lost > 0 {
        let _ = writeln!(
            out,
            "<p class=\"warn\">{} events were lost (ring buffer full): the figures miss them.</p>",
            fmt_count(s.lost)
        );
    }
    if s.close_wait_now > 0 {
        let _ = writeln!(
            out,
            "<p class=\"warn\">{} sockets still in CLOSE_WAIT at the end (peer closed, application has not).</p>",
            fmt_count(s.close_wait_now)
        );
    }
    group_table(&mut out, &s.overall);
    for c in charts {
        let _ = writeln!(
            out,
            "<figure><img src=\"{}\" alt=\"{}\" width=\"1200\" height=\"800\"><figcaption>{}</figcaption></figure>",
            c.file,
            esc(c.title),
            esc(c.title)
        );
    }
    for (title, groups) in [
        ("By remote port (client side)", &s.by_remote_port),
        ("By local port (server side)", &s.by_local_port),
        ("By process", &s.by_process),
    ] {
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(out, "<h2>{title}</h2>");
        for g in groups {
            group_table(&mut out, g);
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}
