//! Invitation emails: what the outbox stores and what a sink sends.

use serde::{Deserialize, Serialize};

pub use crate::store::outbox::{INVITATION_EMAIL, PASSWORD_RESET_EMAIL};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationEmail {
    pub invitation_id: String,
    pub to: String,
    pub first_name: String,
    pub org_name: String,
    pub inviter_name: String,
    pub role: String,
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordResetEmail {
    pub to: String,
    #[serde(default)]
    pub first_name: String,
    pub reset_url: String,
    pub expires_at: String,
}

impl PasswordResetEmail {
    pub fn from_payload(raw: &str) -> Result<PasswordResetEmail, serde_json::Error> {
        serde_json::from_str(raw)
    }

    pub fn render(&self) -> EmailMessage {
        let greeting = if self.first_name.is_empty() {
            "Hello".to_owned()
        } else {
            format!("Hello {}", self.first_name)
        };
        EmailMessage {
            kind: PASSWORD_RESET_EMAIL,
            id: String::new(),
            to: self.to.clone(),
            subject: "Reset your teamgate password".into(),
            text: format!(
                "{greeting},\n\nSomeone asked to reset the password of this account. If it was you, open: {}\n\nThe link works once and expires at {}. If it was not you, ignore this email.\n",
                self.reset_url, self.expires_at
            ),
            html: format!(
                "<p>{}</p><p>Someone asked to reset the password of this account.</p><p><a href=\"{}\">Choose a new password</a></p><p>The link works once and expires at {}. If it was not you, ignore this email.</p>",
                escape_html(&greeting),
                escape_html(&self.reset_url),
                escape_html(&self.expires_at)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmailMessage {
    /// The outbox message kind (`invitation_email`, `password_reset_email`): the webhook's
    /// `type`, and what the logs call it.
    pub kind: &'static str,
    /// A stable id for this message (the outbox id): the same on every retry, so receivers
    /// can drop duplicates.
    pub id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

impl InvitationEmail {
    pub fn from_payload(raw: &str) -> Result<InvitationEmail, serde_json::Error> {
        serde_json::from_str(raw)
    }

    pub fn render(&self, accept_url_base: &str) -> EmailMessage {
        let link = format!("{accept_url_base}{}", self.token);
        let inviter = if self.inviter_name.is_empty() {
            "A colleague".to_owned()
        } else {
            self.inviter_name.clone()
        };
        let greeting = if self.first_name.is_empty() {
            "Hello".to_owned()
        } else {
            format!("Hello {}", self.first_name)
        };
        let subject = format!(
            "{inviter} invited you to join {} on teamgate",
            self.org_name
        );
        let text = format!(
            "{greeting},\n\n{inviter} invited you to join {} as {}.\n\nAccept the invitation: {link}\n\nThe link expires at {}.\n",
            self.org_name, self.role, self.expires_at
        );
        let html = format!(
            "<p>{}</p><p>{} invited you to join <strong>{}</strong> as {}.</p><p><a href=\"{}\">Accept the invitation</a></p><p>The link expires at {}.</p>",
            escape_html(&greeting),
            escape_html(&inviter),
            escape_html(&self.org_name),
            escape_html(&self.role),
            escape_html(&link),
            escape_html(&self.expires_at)
        );
        EmailMessage {
            kind: INVITATION_EMAIL,
            id: String::new(),
            to: self.to.clone(),
            subject,
            text,
            html,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_link_and_escapes_html() {
        let e = InvitationEmail {
            invitation_id: "i".into(),
            to: "a@x.com".into(),
            first_name: "Ann".into(),
            org_name: "<Acme & Co>".into(),
            inviter_name: "Bob".into(),
            role: "member".into(),
            token: "tok".into(),
            expires_at: "2026-12-01T00:00:00Z".into(),
        };
        let m = e.render("https://app/accept?token=");
        assert!(m.text.contains("https://app/accept?token=tok"));
        assert!(m.html.contains("&lt;Acme &amp; Co&gt;"));
        assert!(m.subject.contains("Bob invited you"));
    }
}
