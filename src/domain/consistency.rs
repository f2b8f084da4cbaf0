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

impl ConsistencyToken {
    pub fn encode(&self) -> String {
        let wire = Wire {
            o: self.org.to_string(),
            v: self.version,
        };
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        format!("ct1.{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(raw: &str) -> Result<ConsistencyToken, DomainError> {
        let bad = || {
            DomainError::invalid_because(
                "consistency.at_least_as_fresh",
                "INVALID_CONSISTENCY_TOKEN",
                "at_least_as_fresh is not a consistency_token returned by teamgate: pass one unchanged",
            )
        };
        let body = raw.strip_prefix("ct1.").ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let org = OrgId::from_stored(&wire.o).ok_or_else(bad)?;
        if wire.v < 0 {
            return Err(bad());
        }
        Ok(ConsistencyToken {
            org,
            version: wire.v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let t = ConsistencyToken {
            org: OrgId::generate(),
            version: 42,
        };
        assert_eq!(ConsistencyToken::decode(&t.encode()).unwrap(), t);
    }

    proptest! {
        #[test]
        fn garbage_is_rejected_without_panic(s in "\\PC{0,200}") {
            let _ = ConsistencyToken::decode(&s);
            let _ = ConsistencyToken::decode(&format!("ct1.{s}"));
        }
    }
}
