//! The invitation lifecycle: pending → accepted | expired | revoked, in one place.

use chrono::{DateTime, Utc};

use super::error::DomainError;

/// What is stored. `Expired` is never stored: a pending invitation past its expiry reads as
/// expired everywhere, whether or not anything has swept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredState {
    Pending,
    Accepted,
    Revoked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Expired,
    Revoked,
}

impl StoredState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredState::Pending => "pending",
            StoredState::Accepted => "accepted",
            StoredState::Revoked => "revoked",
        }
    }

    pub fn from_stored(raw: &str) -> StoredState {
        match raw {
            "accepted" => StoredState::Accepted,
            "revoked" => StoredState::Revoked,
            _ => StoredState::Pending,
        }
    }

    pub fn status(self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> InvitationStatus {
        match self {
            StoredState::Pending if now >= expires_at => InvitationStatus::Expired,
            StoredState::Pending => InvitationStatus::Pending,
            StoredState::Accepted => InvitationStatus::Accepted,
            StoredState::Revoked => InvitationStatus::Revoked,
        }
    }
}

impl InvitationStatus {
    /// Accepting is only possible while pending.
    pub fn ensure_acceptable(self) -> Result<(), DomainError> {
        match self {
            InvitationStatus::Pending => Ok(()),
            InvitationStatus::Expired => Err(DomainError::precondition(
                "INVITATION_EXPIRED",
                "this invitation has expired: ask the organization to resend it",
            )),
            InvitationStatus::Revoked => Err(DomainError::precondition(
                "INVITATION_REVOKED",
                "this invitation was revoked: ask the organization for a new one",
            )),
            InvitationStatus::Accepted => Err(DomainError::precondition(
                "INVITATION_USED",
                "this invitation was already accepted: sign in instead",
            )),
        }
    }

    /// Resending works on pending and expired invitations.
    pub fn ensure_resendable(self) -> Result<(), DomainError> {
        match self {
            InvitationStatus::Pending | InvitationStatus::Expired => Ok(()),
            InvitationStatus::Revoked => Err(DomainError::precondition(
                "INVITATION_REVOKED",
                "a revoked invitation cannot be resent: invite the person again",
            )),
            InvitationStatus::Accepted => Err(DomainError::precondition(
                "INVITATION_USED",
                "this invitation was already accepted",
            )),
        }
    }

    /// Revoking ends a pending invitation only.
    pub fn ensure_revocable(self) -> Result<(), DomainError> {
        match self {
            InvitationStatus::Pending => Ok(()),
            InvitationStatus::Expired => Err(DomainError::precondition(
                "INVITATION_EXPIRED",
                "this invitation has already expired and holds no seat",
            )),
            other => other.ensure_resendable(),
        }
    }

    /// Whether the invitation occupies a seat.
    pub fn holds_seat(self) -> bool {
        self == InvitationStatus::Pending
    }
}

/// Seats = active members + pending invitations; adding `adding` must stay within the plan.
pub fn ensure_seat_available(
    members: u64,
    pending_invitations: u64,
    adding: u64,
    max_members: Option<u32>,
    plan: &str,
    upgrade_hint: &str,
) -> Result<(), DomainError> {
    match max_members {
        Some(max) if members + pending_invitations + adding > u64::from(max) => {
            Err(DomainError::precondition(
                "PLAN_SEAT_LIMIT",
                format!(
                    "the {plan} plan allows {max} member(s) including pending invitations: {upgrade_hint}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn pending_past_expiry_reads_expired() {
        let now = Utc::now();
        assert_eq!(
            StoredState::Pending.status(now + Duration::days(1), now),
            InvitationStatus::Pending
        );
        assert_eq!(
            StoredState::Pending.status(now, now),
            InvitationStatus::Expired
        );
        assert_eq!(
            StoredState::Accepted.status(now, now),
            InvitationStatus::Accepted
        );
    }

    #[test]
    fn transitions() {
        assert_eq!(
            InvitationStatus::Expired
                .ensure_acceptable()
                .unwrap_err()
                .reason(),
            "INVITATION_EXPIRED"
        );
        assert_eq!(
            InvitationStatus::Revoked
                .ensure_acceptable()
                .unwrap_err()
                .reason(),
            "INVITATION_REVOKED"
        );
        assert_eq!(
            InvitationStatus::Accepted
                .ensure_acceptable()
                .unwrap_err()
                .reason(),
            "INVITATION_USED"
        );
        assert!(InvitationStatus::Expired.ensure_resendable().is_ok());
        assert!(InvitationStatus::Revoked.ensure_resendable().is_err());
        assert!(InvitationStatus::Pending.ensure_revocable().is_ok());
    }

    #[test]
    fn seats() {
        assert!(ensure_seat_available(1, 0, 1, Some(2), "free", "upgrade").is_ok());
        let err = ensure_seat_available(1, 1, 1, Some(2), "free", "upgrade").unwrap_err();
        assert_eq!(err.reason(), "PLAN_SEAT_LIMIT");
        assert!(err.to_string().contains("upgrade"));
        assert!(ensure_seat_available(100, 100, 1, None, "big", "").is_ok());
    }
}
