//! Which changes can take an open stream's right to watch away from its actor.
//!
//! A stream re-authorizes its actor (through `App::authorize`) before delivering changes that
//! might have revoked it, and only then: re-checking on every batch would cost one
//! authorization query per stream per change, which is the load the shared reader exists to
//! avoid. Unknown actions count as relevant, so a new kind of change errs towards a check.

use crate::store::changes::ChangeRow;

/// The `target` of changes about `user_id` (`member.removed`, `user.disabled`, …).
pub fn user_target(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Whether `row` may change what the actor whose target is `actor_target` may do in its org.
pub fn may_affect(row: &ChangeRow, actor_target: &str) -> bool {
    if row.target == actor_target {
        // Removed, demoted, disabled, lost two-factor: all target the actor.
        return true;
    }
    let area = row.action.split('.').next().unwrap_or("");
    // Changes about other members, other accounts and invitations leave the actor's
    // membership and role alone. Roles (a custom role's permissions), ownership transfers
    // (the previous owner is demoted without being the target) and the org itself (deleted,
    // `require_mfa` turned on) can revoke access of anyone.
    !matches!(area, "member" | "user" | "invitation")
}

/// Whether `row` deleted the org it belongs to: the stream ends after delivering it.
pub fn deletes_org(row: &ChangeRow) -> bool {
    row.action == "organization.deleted"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, target: &str) -> ChangeRow {
        ChangeRow {
            seq: 1,
            org_id: "o".into(),
            action: action.into(),
            target: target.into(),
            actor_user_id: "x".into(),
            occurred_at: chrono::Utc::now(),
            org_version: 1,
            pos: 0,
            xid: 0,
        }
    }

    #[test]
    fn changes_about_the_actor_or_the_org_count() {
        let me = user_target("me");
        assert!(may_affect(&row("member.removed", "user:me"), &me));
        assert!(may_affect(&row("user.disabled", "user:me"), &me));
        assert!(may_affect(&row("member.role_changed", "user:me"), &me));
        assert!(may_affect(&row("role.updated", "role:auditor"), &me));
        assert!(may_affect(&row("ownership.transferred", "user:other"), &me));
        assert!(may_affect(
            &row("organization.updated", "organization:o"),
            &me
        ));
        assert!(may_affect(
            &row("organization.deleted", "organization:o"),
            &me
        ));
        assert!(may_affect(&row("sso.something_new", "x"), &me));
    }

    #[test]
    fn changes_about_others_do_not() {
        let me = user_target("me");
        assert!(!may_affect(&row("member.removed", "user:other"), &me));
        assert!(!may_affect(&row("user.disabled", "user:other"), &me));
        assert!(!may_affect(&row("member.invited", "invitation:1"), &me));
        assert!(!may_affect(
            &row("invitation.accepted", "invitation:1"),
            &me
        ));
    }
}
