//! Caller authentication (service keys and scopes), per-key rate limits, load shedding, TLS
//! and mTLS, and the loopback-only rule.

use teamgate::config::{Config, Overrides, ServiceKeyConfig};
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestServer, as_actor, assert_error, unwrap_err};

fn with_key<T>(key: &str, mut req: tonic::Request<T>) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    req
}

fn key(name: &str, scopes: &[&str], rate: Option<u32>) -> (String, ServiceKeyConfig) {
    let (secret, hash) = teamgate::api::auth::new_key();
    let scopes = scopes
        .iter()
        .map(|s| serde_json::from_value(serde_json::Value::String((*s).into())).unwrap())
        .collect();
    (
        secret,
        ServiceKeyConfig {
            name: name.into(),
            hash,
            scopes,
            rate_limit_per_sec: rate,
            trust_client_address: false,
        },
    )
}

fn check_req(org: &str, user: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        org_id: org.into(),
        user_id: user.into(),
        permission: "members.view".into(),
        consistency: None,
    }
}

#[tokio::test]
async fn service_keys_and_scopes() {
    let (admin, admin_cfg) = key("provisioning", &["admin"], None);
    let (checker, checker_cfg) = key("api-gateway", &["authz"], None);
    let (team, team_cfg) = key("settings-ui", &["team"], None);
    let s = TestServer::spawn_with(Backend::Sqlite, |c| {
        c.auth.keys = vec![admin_cfg, checker_cfg, team_cfg]
    })
    .await;

    // No key, a wrong key: UNAUTHENTICATED. Health and reflection stay open.
    let create = || pb::CreateOrganizationRequest {
        name: "Keyed".into(),
        plan: String::new(),
        owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
            pb::NewUser {
                email: "keyed@example.com".into(),
                first_name: "K".into(),
                last_name: String::new(),
            },
        )),
    };
    let err = unwrap_err(s.team.clone().create_organization(create()).await);
    assert_error(&err, Code::Unauthenticated, "MISSING_CREDENTIALS");
    let err = unwrap_err(
        s.team
            .clone()
            .create_organization(with_key("tgk_nope", tonic::Request::new(create())))
            .await,
    );
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    HealthClient::new(s.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // A key without the scope: PERMISSION_DENIED.
    let err = unwrap_err(
        s.team
            .clone()
            .create_organization(with_key(&checker, tonic::Request::new(create())))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_SCOPE");
    let resp = s
        .team
        .clone()
        .create_organization(with_key(&team, tonic::Request::new(create())))
        .await
        .unwrap()
        .into_inner();
    let org = resp.organization.unwrap().id;
    let owner = resp.owner.unwrap().user_id;
    let err = unwrap_err(
        s.authz
            .clone()
            .check(with_key(
                &team,
                tonic::Request::new(check_req(&org, &owner)),
            ))
            .await,
    );
    assert_error(&err, Code::PermissionDenied, "MISSING_SCOPE");
    for k in [&checker, &admin] {
        let c = s
            .authz
            .clone()
            .check(with_key(k, tonic::Request::new(check_req(&org, &owner))))
            .await
            .unwrap();
        assert!(c.into_inner().allowed);
    }

    // The key's name is recorded in audit events.
    let events = s
        .team
        .clone()
        .list_audit_events(with_key(
            &admin,
            as_actor(
                &owner,
                pb::ListAuditEventsRequest {
                    org_id: org.clone(),
                    ..Default::default()
                },
            ),
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events[0].after.contains("settings-ui"), "{:?}", events[0]);
    s.stop().await;
}

#[tokio::test]
async fn rate_limit_per_key_and_load_shedding() {
    let (slow, slow_cfg) = key("chatty", &["authz"], Some(2));
    let s = TestServer::spawn_with(Backend::Sqlite, |c| c.auth.keys = vec![slow_cfg]).await;
    let org = uuid::Uuid::now_v7().to_string();
    let mut limited = 0;
    for _ in 0..20 {
        if let Err(e) = s
            .authz
            .clone()
            .check(with_key(&slow, tonic::Request::new(check_req(&org, &org))))
            .await
        {
            assert_error(&e, Code::ResourceExhausted, "RATE_LIMITED");
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 were limited");
    s.stop().await;

    // A call that outlives server.request_timeout_ms ends with DEADLINE_EXCEEDED.
    let data = TestServer::spawn(Backend::Sqlite).await;
    let (org, owner) = data.org("Slow", "").await;
    let s = data.replica_with(|c| c.server.request_timeout_ms = 1).await;
    // Distinct users (the owner and strangers), so the consistent batch really reads 1,000
    // subjects: one repeated pair would be deduplicated to a single read, which a lagging timer
    // on a busy machine can let finish "within" 1 ms.
    let items: Vec<pb::CheckItem> = (0..1000)
        .map(|i| pb::CheckItem {
            org_id: org.clone(),
            user_id: if i == 0 {
                owner.clone()
            } else {
                uuid::Uuid::now_v7().to_string()
            },
            permission: if i % 2 == 0 {
                "members.view"
            } else {
                "org.delete"
            }
            .into(),
        })
        .collect();
    let mut timed_out = 0;
    for _ in 0..5 {
        let r = s
            .authz
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items: items.clone(),
                consistency: Some(pb::Consistency {
                    requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
                }),
            })
            .await;
        if let Err(e) = r {
            assert_error(&e, Code::DeadlineExceeded, "TIMEOUT");
            timed_out += 1;
        }
    }
    assert!(
        timed_out > 0,
        "a 1000-item consistent batch never took over 1 ms"
    );
    s.stop().await;
    data.stop().await;

    // One slot: parallel calls beyond it are shed, not queued.
    let s = TestServer::spawn_with(Backend::Sqlite, |c| c.server.max_concurrent_requests = 1).await;
    let (org, owner) = s.org("Busy", "").await;
    let items: Vec<pb::CheckItem> = (0..1000)
        .map(|_| pb::CheckItem {
            org_id: org.clone(),
            user_id: owner.clone(),
            permission: "members.view".into(),
        })
        .collect();
    let calls = (0..64).map(|_| {
        let mut client = s.authz.clone();
        let items = items.clone();
        async move {
            client
                .batch_check(pb::BatchCheckRequest {
                    items,
                    consistency: Some(pb::Consistency {
                        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
                    }),
                })
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let shed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!shed.is_empty(), "nothing was shed");
    assert!(results.iter().any(|r| r.is_ok()));
    for e in shed {
        assert_error(e, Code::ResourceExhausted, "OVERLOADED");
    }
    s.stop().await;
}

#[test]
fn no_keys_means_loopback_only() {
    let err = Config::load(
        None,
        &Overrides {
            listen: Some("0.0.0.0:50051".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("insecure-allow-remote"), "{err}");
    let ok = Config::load(
        None,
        &Overrides {
            listen: Some("0.0.0.0:50051".into()),
            insecure_allow_remote: true,
            ..Default::default()
        },
    );
    assert!(ok.is_ok());
}

struct Pki {
    ca: Certificate,
    server_cert: String,
    server_key: String,
    client: Identity,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: Certificate::from_pem(ca_cert.pem()),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client: Identity::from_pem(client.pem(), client_key.serialize_pem()),
    }
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let cert = write("server.pem", pki.server_cert.as_bytes());
    let key = write("server.key", pki.server_key.as_bytes());
    let ca = write("ca.pem", pki.ca.clone().into_inner().as_slice());
    let tls = teamgate::config::TlsConfig {
        cert_file: cert,
        key_file: key,
        client_ca_file: Some(ca),
    };
    let mut config = crate::helpers::isolated_config(Backend::Sqlite, dir.path());
    config.tls = Some(tls);
    let running = teamgate::startup::start(&config, Default::default())
        .await
        .unwrap();
    let url = format!("https://localhost:{}", running.addr.port());

    // With the client certificate: served.
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(pki.ca.clone())
                .domain_name("localhost")
                .identity(pki.client),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let c = AuthzServiceClient::new(channel)
        .check(check_req(
            &uuid::Uuid::now_v7().to_string(),
            &uuid::Uuid::now_v7().to_string(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.reason(), pb::Reason::OrgNotFound);

    // Without one: the handshake or the call fails.
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let attempt = async {
        let channel = Channel::from_shared(url)
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(pki.ca)
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await?;
        AuthzServiceClient::new(channel)
            .check(check_req(
                &uuid::Uuid::now_v7().to_string(),
                &uuid::Uuid::now_v7().to_string(),
            ))
            .await?;
        Ok::<(), BoxError>(())
    };
    let result = attempt.await;
    assert!(
        result.is_err(),
        "a client without a certificate must be refused"
    );
    running.shutdown().await.unwrap();
}
