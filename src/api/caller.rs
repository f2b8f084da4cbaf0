//! Who a per-caller limit should hold to account for a call.
//!
//! In a real deployment the TCP peer is a backend or Envoy speaking for many end clients, so
//! keying limits on it lets one noisy client lock everyone out. A service key trusted to do
//! so (`trust_client_address`) names the end client in `x-client-address`; any other key is
//! held to account as itself, whatever it sends, so nobody can spread failures over made-up
//! addresses; without keys (loopback development) the peer is all there is.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use tonic::Request;

use super::context::CallerKey;
use crate::domain::DomainError;

pub const CLIENT_ADDRESS_HEADER: &str = "x-client-address";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerId {
    /// The end client's address, named by a trusted caller (IPv6 cut to its /64, see
    /// [`parse_client_address`]).
    ClientAddress(IpAddr),
    /// A service key's name, for keys not trusted to name their clients.
    ServiceKey(String),
    /// The TCP peer (none over a transport without addresses).
    Peer(Option<IpAddr>),
}

impl Default for CallerId {
    fn default() -> Self {
        CallerId::Peer(None)
    }
}

/// The caller of `req`; `x-client-address` from a trusted key must be a single IP address
/// (optionally with a port), or the call is INVALID_ARGUMENT / INVALID_CLIENT_ADDRESS.
pub fn caller_id<T>(req: &Request<T>) -> Result<CallerId, DomainError> {
    let Some(key) = req.extensions().get::<CallerKey>() else {
        return Ok(CallerId::Peer(req.remote_addr().map(|a| a.ip())));
    };
    if !key.trust_client_address {
        return Ok(CallerId::ServiceKey(key.name.clone()));
    }
    let mut values = req.metadata().get_all(CLIENT_ADDRESS_HEADER).iter();
    let Some(first) = values.next() else {
        return Ok(CallerId::ServiceKey(key.name.clone()));
    };
    // Two values mean a proxy appended to one the client sent; which is real is unknowable.
    let ip = match values.next() {
        None => first.to_str().ok().and_then(parse_client_address),
        Some(_) => None,
    };
    ip.map(CallerId::ClientAddress).ok_or_else(|| {
        DomainError::invalid_because(
            CLIENT_ADDRESS_HEADER,
            "INVALID_CLIENT_ADDRESS",
            format!(
                "{CLIENT_ADDRESS_HEADER} must be one IP address of the end client, optionally with a port (203.0.113.7, 203.0.113.7:5123, [2001:db8::7]:443)"
            ),
        )
    })
}

/// An end client's address as a limit key: `ip`, `ip:port` or `[ipv6]:port`. An IPv6 client
/// is cut to its /64, the block one subscriber is usually given, so rotating through it
/// does not buy a fresh budget; an IPv4-mapped one is read as IPv4.
pub fn parse_client_address(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim();
    let ip = raw
        .parse::<IpAddr>()
        .or_else(|_| raw.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| {
            raw.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or_default()
                .parse::<IpAddr>()
        })
        .ok()?;
    Some(match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: Option<(&str, bool)>, addresses: &[&str]) -> Request<()> {
        let mut req = Request::new(());
        if let Some((name, trust)) = key {
            req.extensions_mut().insert(CallerKey {
                name: name.into(),
                trust_client_address: trust,
                operator: false,
            });
        }
        for a in addresses {
            req.metadata_mut()
                .append(CLIENT_ADDRESS_HEADER, a.parse().unwrap());
        }
        req
    }

    #[test]
    fn client_addresses_parse_with_or_without_ports() {
        let v4 = Some(IpAddr::from([203, 0, 113, 7]));
        assert_eq!(parse_client_address("203.0.113.7"), v4);
        assert_eq!(parse_client_address(" 203.0.113.7:5123 "), v4);
        assert_eq!(parse_client_address("::ffff:203.0.113.7"), v4);
        let block = Some("2001:db8:1:2::".parse().unwrap());
        assert_eq!(parse_client_address("2001:db8:1:2:aaaa::7"), block);
        assert_eq!(parse_client_address("[2001:db8:1:2::8]:443"), block);
        assert_eq!(parse_client_address("[2001:db8:1:2::9]"), block);
        for bad in [
            "",
            "client",
            "203.0.113.7, 10.0.0.1",
            "203.0.113.300",
            "[::1]:x",
        ] {
            assert_eq!(parse_client_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_trusted_keys_name_the_client() {
        let ip = IpAddr::from([198, 51, 100, 1]);
        assert_eq!(
            caller_id(&request(Some(("edge", true)), &["198.51.100.1"])).unwrap(),
            CallerId::ClientAddress(ip)
        );
        assert_eq!(
            caller_id(&request(Some(("edge", true)), &[])).unwrap(),
            CallerId::ServiceKey("edge".into()),
            "a trusted key naming nobody answers for itself"
        );
        assert_eq!(
            caller_id(&request(Some(("web", false)), &["198.51.100.1"])).unwrap(),
            CallerId::ServiceKey("web".into()),
            "the header is ignored from other keys"
        );
        assert_eq!(
            caller_id(&request(None, &["198.51.100.1"])).unwrap(),
            CallerId::Peer(None),
            "and without keys"
        );
    }

    #[test]
    fn a_trusted_key_must_name_one_valid_address() {
        for addresses in [&["nonsense"][..], &["198.51.100.1", "198.51.100.2"]] {
            let err = caller_id(&request(Some(("edge", true)), addresses)).unwrap_err();
            assert_eq!(err.reason(), "INVALID_CLIENT_ADDRESS", "{addresses:?}");
        }
        // A key that is not trusted is not held to the header's format either.
        assert!(caller_id(&request(Some(("web", false)), &["nonsense"])).is_ok());
    }
}
