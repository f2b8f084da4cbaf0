//! Whether the database server can be reached at all, probed with a bare TCP connect.
//!
//! While it cannot, calls that need the database fail at once with UNAVAILABLE instead of
//! each waiting out the pool's acquire timeout: otherwise the callers stuck on a dead
//! database hold every worker, and even the answers the caches could give stop flowing.
//! A TCP connect, unlike a pooled ping, is not fooled by a pool that is merely busy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

pub struct Reachability {
    /// Host and port of a PostgreSQL server; `None` for SQLite or a Unix socket, which are
    /// never reported down.
    addr: Option<(String, u16)>,
    down: AtomicBool,
}

impl Reachability {
    pub fn for_url(url: &str) -> Reachability {
        Reachability {
            addr: tcp_address(url),
            down: AtomicBool::new(false),
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Probes once and remembers the outcome; `None` when there is nothing to probe.
    pub async fn probe(&self, timeout: Duration) -> Option<bool> {
        let (host, port) = self.addr.as_ref()?;
        let connect = TcpStream::connect((host.as_str(), *port));
        let up = matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
        self.down.store(!up, Ordering::Release);
        Some(up)
    }
}

fn tcp_address(url: &str) -> Option<(String, u16)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return None;
    }
    // `?host=/run/postgresql` means a Unix socket, whatever the authority says.
    if parsed.query_pairs().any(|(k, _)| k == "host") {
        return None;
    }
    let host = parsed.host_str().filter(|h| !h.is_empty())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((host, parsed.port().unwrap_or(5432)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_postgres_urls_are_probed() {
        assert_eq!(
            tcp_address("postgres://u:p@db.internal:6432/teamgate?sslmode=require"),
            Some(("db.internal".into(), 6432))
        );
        assert_eq!(
            tcp_address("postgresql://u@127.0.0.1/x"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            tcp_address("postgres://u@[::1]:5433/x"),
            Some(("::1".into(), 5433))
        );
        assert_eq!(tcp_address("postgres:///x?host=/run/postgresql"), None);
        assert_eq!(tcp_address("sqlite://teamgate.db?mode=rwc"), None);
        assert_eq!(tcp_address("not a url"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_down_and_an_open_one_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Reachability::for_url(&format!("postgres://u@127.0.0.1:{port}/x"));
        assert_eq!(r.probe(Duration::from_secs(1)).await, Some(true));
        assert!(!r.is_down());
        drop(listener);
        assert_eq!(r.probe(Duration::from_secs(1)).await, Some(false));
        assert!(r.is_down());
        let sqlite = Reachability::for_url("sqlite://x.db");
        assert_eq!(sqlite.probe(Duration::from_secs(1)).await, None);
        assert!(!sqlite.is_down());
    }
}
