//! TXT lookups for domain verification, through the configured DNS server or the system's.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveErrorKind, TokioResolver};

use crate::domain::DomainError;

fn unavailable() -> DomainError {
    DomainError::unavailable(
        "DNS_UNAVAILABLE",
        "the DNS lookup for the verification record failed: retry shortly",
    )
}

/// The TXT records at `domain` (each record's strings joined); empty when there are none.
/// A resolver is built per lookup with no cache, so a record published a moment ago is seen.
pub(super) async fn txt_records(
    server: Option<SocketAddr>,
    domain: &str,
    timeout: Duration,
) -> Result<Vec<String>, DomainError> {
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.timeout = timeout;
    opts.attempts = 2;
    let builder = match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            tracing::warn!(error = %e, "no system DNS configuration");
            unavailable()
        })?,
    };
    let resolver = builder.with_options(opts).build();
    // The trailing dot keeps the system's search domains out of it.
    match resolver.txt_lookup(format!("{domain}.")).await {
        Ok(lookup) => Ok(lookup
            .iter()
            .map(|txt| {
                txt.txt_data()
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>()
            })
            .collect()),
        Err(e) if matches!(e.kind(), ResolveErrorKind::Proto(p) if p.is_no_records_found() || p.is_nx_domain()) => {
            Ok(Vec::new())
        }
        Err(e) => {
            tracing::warn!(error = %e, "TXT lookup failed");
            Err(unavailable())
        }
    }
}
