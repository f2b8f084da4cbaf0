//! The server itself: reflection (v1 and v1alpha), health, request ids, graceful shutdown.

use teamgate::proto::teamgate::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

use crate::helpers::{Backend, TestServer};

#[tokio::test]
async fn reflection_lists_services_and_error_types() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    let mut client = ServerReflectionClient::new(s.channel.clone());
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "google.rpc.ErrorInfo".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected {first:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "teamgate.v1.TeamService",
        "teamgate.v1.AuthzService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let second = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            second.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "google.rpc.ErrorInfo must be resolvable: {second:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn health_serves_then_drains() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    let mut health = HealthClient::new(s.channel.clone());
    for service in ["", "teamgate.v1.TeamService", "teamgate.v1.AuthzService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving);
    }
    s.stop().await;
}

/// `teamgate health`, the container image's health check: the real binary asks a real server.
#[tokio::test]
async fn health_command_reports_serving_and_unreachable() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    let addr = s.running.as_ref().unwrap().addr;
    // Off the runtime's thread: the server under test runs on it.
    let probe = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_teamgate"))
                .arg("health")
                .args(args)
                .output()
        })
        .await
        .unwrap()
    };

    let up = probe(vec!["--addr".into(), addr.to_string()])
        .await
        .unwrap();
    assert!(up.status.success(), "{up:?}");
    assert_eq!(String::from_utf8_lossy(&up.stdout).trim(), "SERVING");

    let unknown = probe(vec![
        "--addr".into(),
        addr.to_string(),
        "--service".into(),
        "no.such.Service".into(),
    ])
    .await
    .unwrap();
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");

    s.stop().await;
    let down = probe(vec![
        "--addr".into(),
        addr.to_string(),
        "--timeout-ms".into(),
        "500".into(),
    ])
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        String::from_utf8_lossy(&down.stdout).starts_with("unreachable")
            || String::from_utf8_lossy(&down.stdout).starts_with("no answer"),
        "{down:?}"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    let mut req = tonic::Request::new(pb::CheckRequest {
        org_id: uuid::Uuid::now_v7().to_string(),
        user_id: uuid::Uuid::now_v7().to_string(),
        permission: "members.view".into(),
        consistency: None,
    });
    req.metadata_mut()
        .insert("x-request-id", "abc-123".parse().unwrap());
    let resp = s.authz.clone().check(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "abc-123");
    let resp = s
        .authz
        .clone()
        .check(pb::CheckRequest {
            org_id: uuid::Uuid::now_v7().to_string(),
            user_id: uuid::Uuid::now_v7().to_string(),
            permission: "members.view".into(),
            consistency: None,
        })
        .await
        .unwrap();
    let made = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok());
    s.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    let (org, owner) = s.org("Durable", "").await;
    let replica = s.replica().await;
    s.stop().await;
    assert!(replica.allowed(&org, &owner, "org.delete").await);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_calls_and_refuses_new_ones() {
    let mut s = TestServer::spawn(Backend::Sqlite).await;
    let (org, owner) = s.org("Draining", "").await;
    let items: Vec<pb::CheckItem> = (0..1000)
        .map(|_| pb::CheckItem {
            org_id: org.clone(),
            user_id: owner.clone(),
            permission: "members.view".into(),
        })
        .collect();
    let fully = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    });
    // Calls in flight when the shutdown starts.
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let mut client = s.authz.clone();
            let req = pb::BatchCheckRequest {
                items: items.clone(),
                consistency: fully.clone(),
            };
            tokio::spawn(async move { client.batch_check(req).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let running = s.running.take().unwrap();
    running.shutdown().await.unwrap();
    for call in in_flight {
        let resp = call
            .await
            .unwrap()
            .expect("an in-flight call finishes during the drain");
        assert_eq!(resp.into_inner().results.len(), 1000);
    }
    // After the drain, new calls are refused.
    let err = s
        .authz
        .clone()
        .check(pb::CheckRequest {
            org_id: org.clone(),
            user_id: owner.clone(),
            permission: "members.view".into(),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
}
