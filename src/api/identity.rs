//! `teamgate.v1.IdentityService`: accounts and sign-in.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller_id;
use super::context::ctx;
use super::convert::timestamp;
use super::error::with_reason;
use super::limits::{FailureLimiter, IdentityLimits};
use crate::app::App;
use crate::app::identity::{Account, SignInOutcome, UserRef, UserStatus};
use crate::config::IdentityConfig;
use crate::domain::DomainError;
use crate::domain::consistency::encode_all;
use crate::domain::email::Email;
use crate::domain::ids::UserId;
use crate::domain::names::parse_name;
use crate::proto::teamgate::v1 as pb;
use crate::proto::teamgate::v1::identity_service_server::IdentityService;

/// Longest password, email or code accepted before any work is done.
const MAX_INPUT_BYTES: usize = 1024;

pub struct IdentityApi {
    app: Arc<App>,
    limits: IdentityLimits,
    /// StartSso calls per caller: each stores a pending sign-in.
    sso_starts: FailureLimiter,
}

impl IdentityApi {
    pub fn new(app: Arc<App>, config: &IdentityConfig) -> Self {
        let limits = IdentityLimits::from_config(app.clock.clone(), config);
        let sso_starts = FailureLimiter::new(
            app.clock.clone(),
            app.sso.settings().max_starts_per_caller,
            chrono::Duration::minutes(10),
        );
        IdentityApi {
            app,
            limits,
            sso_starts,
        }
    }

    /// Sets two-factor on or off; a wrong code counts against the caller like a failed
    /// sign-in, since guessing it is guessing a sign-in factor.
    async fn set_totp<T>(
        &self,
        request: &Request<T>,
        user_id: &str,
        code: &str,
        enable: bool,
    ) -> Result<String, Status> {
        let ctx = ctx(request)?;
        let caller = caller_id(request)?;
        let id = UserId::parse("user_id", user_id)?;
        let code = bounded("code", code)?;
        let tokens = self
            .limits
            .failures
            .limit(&caller, self.app.set_totp(&ctx, id, code, enable), |e| {
                e.has_reason("INVALID_CODE")
            })
            .await
            .map_err(too_many)??;
        Ok(encode_all(&tokens))
    }
}

pub fn user(u: &Account) -> pb::User {
    let status = match u.status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Disabled => pb::UserStatus::Disabled,
    };
    pb::User {
        id: u.id.to_string(),
        email: u.email.clone(),
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        status: status.into(),
        mfa_enabled: u.mfa_enabled,
        created_at: Some(timestamp(u.created_at)),
        consistency_token: String::new(),
    }
}

fn too_many(wait: u64) -> Status {
    with_reason(
        tonic::Code::ResourceExhausted,
        "TOO_MANY_ATTEMPTS",
        format!("too many failed attempts: retry in {wait} s"),
    )
}

fn bounded<'a>(field: &str, raw: &'a str) -> Result<&'a str, DomainError> {
    if raw.len() > MAX_INPUT_BYTES {
        return Err(DomainError::invalid_because(
            field,
            "FIELD_TOO_LONG",
            format!("{field} must be at most {MAX_INPUT_BYTES} bytes"),
        ));
    }
    Ok(raw)
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = ctx(&request)?;
        let r = match request.into_inner().user_ref {
            Some(pb::get_user_request::UserRef::UserId(id)) => {
                UserRef::Id(UserId::parse("user_id", &id)?)
            }
            Some(pb::get_user_request::UserRef::Email(e)) => {
                UserRef::Email(Email::parse("email", &e)?)
            }
            None => {
                return Err(DomainError::invalid_because(
                    "user_ref",
                    "MISSING_FIELD",
                    "pass user_id or email",
                )
                .into());
            }
        };
        let u = self.app.get_user(&ctx, r).await?;
        Ok(Response::new(user(&u)))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = UserId::parse("user_id", &req.user_id)?;
        let first = req
            .first_name
            .as_deref()
            .map(|n| parse_name("first_name", n))
            .transpose()?;
        let last = req
            .last_name
            .as_deref()
            .map(|n| parse_name("last_name", n))
            .transpose()?;
        let u = self.app.update_user(&ctx, id, first, last).await?;
        Ok(Response::new(user(&u)))
    }

    async fn set_user_status(
        &self,
        request: Request<pb::SetUserStatusRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = ctx(&request)?;
        let req = request.into_inner();
        let id = UserId::parse("user_id", &req.user_id)?;
        let status = match pb::UserStatus::try_from(req.status) {
            Ok(pb::UserStatus::Active) => UserStatus::Active,
            Ok(pb::UserStatus::Disabled) => UserStatus::Disabled,
            _ => {
                return Err(DomainError::invalid_because(
                    "status",
                    "INVALID_STATUS",
                    "status must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED",
                )
                .into());
            }
        };
        let (u, tokens) = self.app.set_user_status(&ctx, id, status).await?;
        Ok(Response::new(pb::User {
            consistency_token: encode_all(&tokens),
            ..user(&u)
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let ctx = ctx(&request)?;
        let caller = caller_id(&request)?;
        let req = request.into_inner();
        bounded("email", &req.email)?;
        bounded("password", &req.password)?;
        if let Some(code) = &req.totp_code {
            bounded("totp_code", code)?;
        }
        let outcome = self
            .limits
            .failures
            .limit(
                &caller,
                self.app
                    .authenticate(&ctx, &req.email, &req.password, req.totp_code.as_deref()),
                |e| e.has_reason("INVALID_CREDENTIALS"),
            )
            .await
            .map_err(too_many)?;
        match outcome {
            Ok(SignInOutcome::SignedIn(s)) => Ok(Response::new(pb::AuthenticateResponse {
                user: Some(user(&s.user)),
                session_token: s.token,
                expires_at: Some(timestamp(s.expires_at)),
            })),
            Ok(SignInOutcome::Throttled(wait)) => Err(too_many(wait)),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.app.jwks().await?;
        Ok(Response::new(pb::GetJwksResponse { keys }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        let ctx = ctx(&request)?;
        let caller = caller_id(&request)?;
        let email = Email::parse("email", &request.get_ref().email)?;
        // Every request counts, found or not: each may send an email, and the answer never
        // says which.
        self.limits.reset_requests.take(&caller).map_err(|wait| {
            with_reason(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
                format!("too many password reset requests: retry in {wait} s"),
            )
        })?;
        self.app.request_password_reset(&ctx, email).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let ctx = ctx(&request)?;
        let caller = caller_id(&request)?;
        let req = request.into_inner();
        let token = req.token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(DomainError::invalid_because(
                "token",
                "MISSING_FIELD",
                "token is required: pass the token from the reset email",
            )
            .into());
        }
        let password = self.app.new_password("new_password", &req.new_password)?;
        self.limits
            .failures
            .limit(
                &caller,
                self.app.reset_password(&ctx, token, password),
                |e| e.has_reason("RESET_TOKEN_INVALID"),
            )
            .await
            .map_err(too_many)??;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let ctx = ctx(&request)?;
        let id = UserId::parse("user_id", &request.get_ref().user_id)?;
        let e = self.app.enroll_totp(&ctx, id).await?;
        Ok(Response::new(pb::EnrollTotpResponse {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
        }))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let req = request.get_ref();
        let consistency_token = self
            .set_totp(&request, &req.user_id, &req.code, true)
            .await?;
        Ok(Response::new(pb::ConfirmTotpResponse { consistency_token }))
    }

    async fn disable_totp(
        &self,
        request: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let req = request.get_ref();
        let consistency_token = self
            .set_totp(&request, &req.user_id, &req.code, false)
            .await?;
        Ok(Response::new(pb::DisableTotpResponse { consistency_token }))
    }

    async fn start_sso(
        &self,
        request: Request<pb::StartSsoRequest>,
    ) -> Result<Response<pb::StartSsoResponse>, Status> {
        let caller = caller_id(&request)?;
        self.sso_starts.take(&caller).map_err(|wait| {
            with_reason(
                tonic::Code::ResourceExhausted,
                "TOO_MANY_REQUESTS",
                format!("too many single sign-on starts: retry in {wait} s"),
            )
        })?;
        super::sso::start(&self.app, request).await
    }

    /// Unknown states count against the caller like failed sign-ins: a state is a bearer
    /// secret, and guessing one is guessing a sign-in.
    async fn complete_sso(
        &self,
        request: Request<pb::CompleteSsoRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let ctx = ctx(&request)?;
        let caller = caller_id(&request)?;
        let (state, code) = super::sso::flow_fields(request.get_ref())?;
        let signed_in = self
            .limits
            .failures
            .limit(&caller, self.app.complete_sso(&ctx, state, code), |e| {
                e.has_reason("SSO_STATE_UNKNOWN")
            })
            .await
            .map_err(too_many)??;
        Ok(super::sso::completed(signed_in))
    }
}
