//! Permission names (`area.action`) and sets of them.

use std::collections::BTreeSet;
use std::fmt;

use super::error::DomainError;

/// A syntactically valid permission name such as `members.manage`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission(String);

const MAX_PERMISSION_LEN: usize = 128;

fn is_segment(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

impl Permission {
    pub fn parse(raw: &str) -> Result<Permission, DomainError> {
        let valid =
            raw.len() <= MAX_PERMISSION_LEN && raw.contains('.') && raw.split('.').all(is_segment);
        if valid {
            Ok(Permission(raw.to_owned()))
        } else {
            Err(DomainError::invalid(
                "permission",
                format!(
                    "`{}` is not a permission name: use lower-case `area.action`, e.g. `members.view`",
                    truncate(raw, 64)
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortens untrusted input before echoing it in an error message.
pub fn truncate(raw: &str, max: usize) -> String {
    match raw.char_indices().nth(max) {
        Some((idx, _)) => format!("{}…", &raw[..idx]),
        None => raw.to_owned(),
    }
}

/// An ordered set of permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeSet<Permission>);

impl PermissionSet {
    pub fn contains(&self, p: &Permission) -> bool {
        self.0.contains(p)
    }

    pub fn contains_str(&self, p: &str) -> bool {
        self.0.iter().any(|q| q.as_str() == p)
    }

    pub fn insert(&mut self, p: Permission) -> bool {
        self.0.insert(p)
    }

    pub fn remove(&mut self, p: &Permission) -> bool {
        self.0.remove(p)
    }

    pub fn is_subset(&self, other: &PermissionSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The permissions of `self` that `other` lacks.
    pub fn missing_from(&self, other: &PermissionSet) -> Vec<String> {
        self.0
            .difference(&other.0)
            .map(|p| p.as_str().to_owned())
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Permission> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|p| p.as_str().to_owned()).collect()
    }
}

impl Extend<Permission> for PermissionSet {
    fn extend<T: IntoIterator<Item = Permission>>(&mut self, iter: T) {
        self.0.extend(iter)
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<T: IntoIterator<Item = Permission>>(iter: T) -> Self {
        PermissionSet(iter.into_iter().collect())
    }
}

/// A permission's position in the policy's catalog (see `Policy::bit`): the check path tests
/// a bit instead of comparing names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PermissionBit(u16);

impl PermissionBit {
    pub fn new(index: u16) -> PermissionBit {
        PermissionBit(index)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of catalog positions. Two words inline cover catalogs of up to 128 permissions
/// without a heap allocation; larger catalogs spill.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionBits(smallvec::SmallVec<[u64; 2]>);

impl PermissionBits {
    pub fn insert(&mut self, bit: PermissionBit) {
        let (word, mask) = (bit.index() / 64, 1u64 << (bit.index() % 64));
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= mask;
    }

    pub fn contains(&self, bit: PermissionBit) -> bool {
        let (word, mask) = (bit.index() / 64, 1u64 << (bit.index() % 64));
        self.0.get(word).is_some_and(|w| w & mask != 0)
    }
}

impl FromIterator<PermissionBit> for PermissionBits {
    fn from_iter<T: IntoIterator<Item = PermissionBit>>(iter: T) -> Self {
        let mut bits = PermissionBits::default();
        for b in iter {
            bits.insert(b);
        }
        bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bits_hold_exactly_what_was_inserted() {
        let set: PermissionBits = [0u16, 63, 64, 200]
            .into_iter()
            .map(PermissionBit::new)
            .collect();
        for i in 0..260u16 {
            let expected = [0, 63, 64, 200].contains(&i);
            assert_eq!(set.contains(PermissionBit::new(i)), expected, "{i}");
        }
        assert!(!PermissionBits::default().contains(PermissionBit::new(0)));
    }

    #[test]
    fn accepts_area_action() {
        assert!(Permission::parse("members.view").is_ok());
        assert!(Permission::parse("loyalty.offers.manage").is_ok());
        assert!(Permission::parse("qr_codes.scan-all").is_ok());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "members",
            "Members.view",
            ".view",
            "members.",
            "a..b",
            "a.b c",
            "a.1b",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,200}") {
            if let Ok(p) = Permission::parse(&s) {
                prop_assert_eq!(p.as_str(), s.as_str());
            }
        }

        /// Any string at all (control characters, arbitrary Unicode, longer than the limit) is
        /// refused or accepted unchanged; an accepted name is at most 128 bytes of lower-case
        /// `area.action` segments and re-parses to itself.
        #[test]
        fn arbitrary_strings_are_refused_or_well_formed(
            s in prop_oneof![
                any::<String>(),
                "[a-z][a-z0-9_-]{0,70}(\\.[a-z][a-z0-9_-]{0,70}){1,3}",
                "[a-zA-Z0-9._ %'\u{0430}\u{200B}-]{0,40}",
            ],
        ) {
            if let Ok(p) = Permission::parse(&s) {
                prop_assert!(p.as_str().len() <= MAX_PERMISSION_LEN);
                prop_assert!(p.as_str().contains('.'));
                prop_assert!(p.as_str().split('.').all(is_segment));
                prop_assert!(p.as_str().is_ascii());
                prop_assert_eq!(Permission::parse(p.as_str()).unwrap(), p);
            } else {
                prop_assert!(
                    s.len() > MAX_PERMISSION_LEN || !s.contains('.') || !s.split('.').all(is_segment)
                );
            }
        }

        #[test]
        fn truncate_is_char_safe(s in "\\PC{0,100}", n in 0usize..80) {
            let t = truncate(&s, n);
            prop_assert!(t.chars().count() <= n + 1);
        }
    }
}
