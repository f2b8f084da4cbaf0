//! Consistency tokens: which version of an org a write produced, so a later Check can demand
//! an answer at least that fresh.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::error::DomainError;
use super::ids::OrgId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub org: OrgId,
    pub version: i64,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    o: String,
    v: i64,
}

/// A token for several orgs at once (an account change touches every org of the account).
#[derive(Serialize, Deserialize)]
struct ManyWire {
    m: Vec<Wire>,
}

const PREFIX: &str = "ct1.";

fn bad_token() -> DomainError {
    DomainError::invalid_because(
        "consistency.at_least_as_fresh",
        "INVALID_CONSISTENCY_TOKEN",
        "at_least_as_fresh is not a consistency_token returned by teamgate: pass one unchanged",
    )
}

fn from_wire(w: Wire) -> Result<ConsistencyToken, DomainError> {
    let org = OrgId::from_stored(&w.o).ok_or_else(bad_token)?;
    if w.v < 0 {
        return Err(bad_token());
    }
    Ok(ConsistencyToken { org, version: w.v })
}

/// Encodes the versions of several orgs as one token: empty for none, the one-org form for
/// one. A Check uses the entry for its own org.
pub fn encode_all(tokens: &[ConsistencyToken]) -> String {
    match tokens {
        [] => String::new(),
        [one] => one.encode(),
        many => {
            let wire = ManyWire {
                m: many
                    .iter()
                    .map(|t| Wire {
                        o: t.org.to_string(),
                        v: t.version,
                    })
                    .collect(),
            };
            let json = serde_json::to_vec(&wire).unwrap_or_default();
            format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
        }
    }
}

/// Decodes a token of one org or of several.
pub fn decode_all(raw: &str) -> Result<Vec<ConsistencyToken>, DomainError> {
    let body = raw.strip_prefix(PREFIX).ok_or_else(bad_token)?;
    let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad_token())?;
    if let Ok(one) = serde_json::from_slice::<Wire>(&bytes) {
        return Ok(vec![from_wire(one)?]);
    }
    let many: ManyWire = serde_json::from_slice(&bytes).map_err(|_| bad_token())?;
    if many.m.is_empty() || many.m.len() > MAX_ORGS_PER_TOKEN {
        return Err(bad_token());
    }
    many.m.into_iter().map(from_wire).collect()
}

/// Bounds the work a crafted token can cause.
const MAX_ORGS_PER_TOKEN: usize = 10_000;

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        use std::io::Write as _;
        // Every Check answer carries one: the JSON that serde would write for `Wire`, made on
        // the stack (a hyphenated UUID and an i64 fit in 80 bytes), one allocation in all.
        let mut json = [0u8; 80];
        let mut cursor = std::io::Cursor::new(&mut json[..]);
        let _ = write!(cursor, "{{\"o\":\"{}\",\"v\":{}}}", self.org, self.version);
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        let mut out = String::with_capacity(PREFIX.len() + 108);
        out.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&json[..len], &mut out);
        out
    }

    /// Decodes a token of exactly one org.
    pub fn decode(raw: &str) -> Result<ConsistencyToken, DomainError> {
        match decode_all(raw)?.as_slice() {
            [one] => Ok(*one),
            _ => Err(bad_token()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_serde_would() {
        for version in [0, 7, i64::MAX] {
            let t = ConsistencyToken {
                org: OrgId::generate(),
                version,
            };
            let json = serde_json::to_vec(&Wire {
                o: t.org.to_string(),
                v: t.version,
            })
            .unwrap();
            assert_eq!(
                t.encode(),
                format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
            );
            assert_eq!(ConsistencyToken::decode(&t.encode()).unwrap(), t);
        }
    }
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let t = ConsistencyToken {
            org: OrgId::generate(),
            version: 42,
        };
        assert_eq!(ConsistencyToken::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn tokens_of_several_orgs_round_trip_and_single_decode_refuses_them() {
        let ts: Vec<ConsistencyToken> = (0..3)
            .map(|v| ConsistencyToken {
                org: OrgId::generate(),
                version: v,
            })
            .collect();
        assert_eq!(decode_all(&encode_all(&ts)).unwrap(), ts);
        assert_eq!(decode_all(&encode_all(&ts[..1])).unwrap(), ts[..1]);
        assert_eq!(encode_all(&ts[..1]), ts[0].encode());
        assert!(ConsistencyToken::decode(&encode_all(&ts)).is_err());
        assert_eq!(encode_all(&[]), "");
    }

    proptest! {
        #[test]
        fn garbage_is_rejected_without_panic(s in "\\PC{0,200}") {
            let _ = ConsistencyToken::decode(&s);
            let _ = ConsistencyToken::decode(&format!("ct1.{s}"));
            let _ = decode_all(&format!("ct1.{s}"));
        }
    }
}
