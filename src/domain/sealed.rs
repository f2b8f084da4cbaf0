//! Secrets at rest (TOTP secrets, signing keys): ChaCha20-Poly1305 under a key from config,
//! bound to what they belong to (the associated data), so a sealed value copied to another
//! row does not open.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

const PREFIX: &str = "v1.";

/// A sealing key. Never printed.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key }
    }

    /// A key from base64 (standard or URL-safe) of 32 bytes.
    pub fn from_base64(raw: &str) -> Option<Sealer> {
        let raw = raw.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .or_else(|_| URL_SAFE_NO_PAD.decode(raw))
            .ok()?;
        Some(Sealer::new(bytes.try_into().ok()?))
    }

    /// A random key, for when none is configured (sealed values then last one process).
    pub fn ephemeral() -> Sealer {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Sealer::new(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(self.key))
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// `None` when the value was sealed under another key or for another context.
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        self.cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_in_context() {
        let s = Sealer::ephemeral();
        let sealed = s.seal("totp:u1", b"secret");
        assert!(!sealed.contains("secret"));
        assert_eq!(s.open("totp:u1", &sealed).unwrap(), b"secret");
        assert!(s.open("totp:u2", &sealed).is_none());
        assert!(Sealer::ephemeral().open("totp:u1", &sealed).is_none());
        assert!(format!("{s:?}").contains("***"));
    }
}
