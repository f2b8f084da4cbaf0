//! Any bytes as a request on the wire, decoded and validated into domain types the way the
//! handlers do: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use teamgate::domain::consistency::ConsistencyToken;
use teamgate::domain::email::Email;
use teamgate::domain::ids::{OrgId, UserId};
use teamgate::domain::names::parse_name;
use teamgate::domain::roles::RoleKey;
use teamgate::proto::teamgate::v1 as pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = pb::InviteMemberRequest::decode(data) {
        let _ = OrgId::parse("org_id", &req.org_id);
        let _ = Email::parse("email", &req.email);
        let _ = parse_name("first_name", &req.first_name);
        let _ = RoleKey::parse(&req.role);
    }
    if let Ok(req) = pb::CheckRequest::decode(data) {
        let _ = UserId::parse("user_id", &req.user_id);
        if let Some(pb::consistency::Requirement::AtLeastAsFresh(t)) =
            req.consistency.and_then(|c| c.requirement)
        {
            let _ = ConsistencyToken::decode(&t);
        }
    }
});
