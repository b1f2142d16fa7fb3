//! Validated settings built from the command line.

use std::time::Duration;

use tcptrace_common::{
    FILTER_IPV4_ONLY, FILTER_IPV6_ONLY, FILTER_LPORT, FILTER_PORT, FILTER_RPORT, MAX_FILTER_PORTS,
};

use crate::cli::FilterArgs;

/// Parses a port list: comma-separated ports and ranges, e.g. `80,443,8000-8010`.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "empty entry in port list {s:?}: use e.g. 80,443 or 8000-8010"
            ));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("port range {part} is reversed: write {hi}-{lo}"));
        }
        out.extend(lo..=hi);
        if out.len() > MAX_FILTER_PORTS as usize {
            return Err(format!(
                "too many ports: at most {MAX_FILTER_PORTS} per filter"
            ));
        }
    }
    Ok(out)
}

fn port(s: &str) -> Result<u16, String> {
    let s = s.trim();
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range: ports are 1 to 65535")),
        Err(_) => Err(format!("{s:?} is not a port number: ports are 1 to 65535")),
    }
}

/// Parses a ring buffer size in KiB: a power of two from 4 (one page) to 1 GiB.
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(k) if k.is_power_of_two() && (4..=1 << 20).contains(&k) => Ok(k),
        _ => Err(format!(
            "{s:?} is not a power of two from 4 to 1048576 (KiB), e.g. 4096 or 65536"
        )),
    }
}

/// Parses a positive number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a positive number of seconds (e.g. 10 or 0.5)"
        )),
    }
}

/// The kernel-side filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    pub ipv4_only: bool,
    pub ipv6_only: bool,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub ports: Vec<u16>,
}

impl Filter {
    pub fn from_args(a: &FilterArgs) -> Result<Self, String> {
        let flat = |v: &Vec<Vec<u16>>| {
            let mut f: Vec<u16> = v.iter().flatten().copied().collect();
            f.sort_unstable();
            f.dedup();
            f
        };
        let f = Self {
            ipv4_only: a.ipv4,
            ipv6_only: a.ipv6,
            lports: flat(&a.lport),
            rports: flat(&a.rport),
            ports: flat(&a.port),
        };
        let mut all: Vec<u16> = f
            .lports
            .iter()
            .chain(&f.rports)
            .chain(&f.ports)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > MAX_FILTER_PORTS as usize {
            return Err(format!(
                "--lport, --rport and --port name {} distinct ports together; at most {MAX_FILTER_PORTS}",
                all.len()
            ));
        }
        Ok(f)
    }

    /// The `FILTER_*` bits for the kernel program.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.ipv4_only {
            f |= FILTER_IPV4_ONLY;
        }
        if self.ipv6_only {
            f |= FILTER_IPV6_ONLY;
        }
        if !self.lports.is_empty() {
            f |= FILTER_LPORT;
        }
        if !self.rports.is_empty() {
            f |= FILTER_RPORT;
        }
        if !self.ports.is_empty() {
            f |= FILTER_PORT;
        }
        f
    }

    pub fn any_ports(&self) -> bool {
        !(self.lports.is_empty() && self.rports.is_empty() && self.ports.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_and_ranges() {
        assert_eq!(parse_ports("80,443"), Ok(vec![80, 443]));
        assert_eq!(parse_ports("8000-8002, 9"), Ok(vec![8000, 8001, 8002, 9]));
    }

    #[test]
    fn bad_ports_name_the_problem() {
        let e = parse_ports("70000").expect_err("out of range");
        assert!(e.contains("70000") && e.contains("1 to 65535"), "{e}");
        assert!(parse_ports("0").expect_err("zero").contains("out of range"));
        assert!(
            parse_ports("http")
                .expect_err("word")
                .contains("not a port")
        );
        assert!(
            parse_ports("9-3")
                .expect_err("reversed")
                .contains("reversed")
        );
        assert!(parse_ports("80,,81").expect_err("empty").contains("empty"));
        assert!(
            parse_ports("1-2000")
                .expect_err("many")
                .contains("too many")
        );
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_kib("4096"), Ok(4096));
        assert_eq!(parse_ring_kib("4"), Ok(4));
        for bad in ["3", "1000", "0", "2097152", "big"] {
            assert!(parse_ring_kib(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn filter_flags_follow_the_sets() {
        let f = Filter::from_args(&FilterArgs {
            ipv4: true,
            lport: vec![vec![80], vec![80, 81]],
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(f.lports, vec![80, 81]);
        assert_eq!(f.flags(), FILTER_IPV4_ONLY | FILTER_LPORT);
        assert_eq!(Filter::default().flags(), 0);
    }
}
