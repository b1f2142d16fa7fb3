//! Validated settings built from the command line (`cli` parses single flag values; this
//! module checks what only the flags together can say).

use tcptrace_common::{
    FILTER_IPV4_ONLY, FILTER_IPV6_ONLY, FILTER_LPORT, FILTER_PORT, FILTER_RPORT, MAX_FILTER_PORTS,
};

use crate::cli::FilterArgs;

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

    /// Whether the kernel-side filter would pass a socket with these addresses (for sockets
    /// found in /proc, which the kernel program never saw).
    pub fn matches(&self, local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
        let (l, r) = (local.port(), remote.port());
        (!self.ipv4_only || local.is_ipv4())
            && (!self.ipv6_only || local.is_ipv6())
            && (self.lports.is_empty() || self.lports.binary_search(&l).is_ok())
            && (self.rports.is_empty() || self.rports.binary_search(&r).is_ok())
            && (self.ports.is_empty()
                || self.ports.binary_search(&l).is_ok()
                || self.ports.binary_search(&r).is_ok())
    }

    pub fn any_ports(&self) -> bool {
        !(self.lports.is_empty() && self.rports.is_empty() && self.ports.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn matches_follows_the_kernel_filter() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        let f = Filter::from_args(&FilterArgs {
            ipv4: true,
            port: vec![vec![8080]],
            ..Default::default()
        })
        .expect("valid");
        assert!(f.matches(a("127.0.0.1:8080"), a("127.0.0.1:40000")));
        assert!(f.matches(a("127.0.0.1:40000"), a("127.0.0.1:8080")));
        assert!(!f.matches(a("127.0.0.1:40000"), a("127.0.0.1:9")));
        assert!(!f.matches(a("[::1]:8080"), a("[::1]:40000")));
        assert!(Filter::default().matches(a("[::1]:1"), a("[::1]:2")));
    }
}
