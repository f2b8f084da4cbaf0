//! The server itself: reflection (v1 and v1alpha, Envoy's ext_authz included), health, request
//! ids, graceful shutdown.

use std::time::Duration;

use teamgate::proto::teamgate::v1 as pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, TestServer};

const SERVICES: [&str; 5] = [
    "teamgate.v1.TeamService",
    "teamgate.v1.AuthzService",
    "teamgate.v1.IdentityService",
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
];

/// One reflection test per protocol version: grpcurl 1.8 speaks v1alpha, newer clients v1.
/// Both list every service, and resolve a symbol to its file and that file's imports by name,
/// transitively, as grpcurl does for `describe`.
macro_rules! reflection_test {
    ($name:ident, $version:ident) => {
        #[tokio::test]
        async fn $name() {
            use prost::Message;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            let s = TestServer::spawn(Backend::Sqlite).await;
            let mut client = ServerReflectionClient::new(s.channel.clone());
            // One request, one answer: its file descriptors, or panics naming the request.
            let mut ask = async |m: MessageRequest| {
                let what = format!("{m:?}");
                let mut stream = client
                    .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(m),
                    }]))
                    .await
                    .unwrap()
                    .into_inner();
                stream
                    .message()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("no answer to {what}"))
                    .message_response
                    .unwrap_or_else(|| panic!("empty answer to {what}"))
            };

            let MessageResponse::ListServicesResponse(list) =
                ask(MessageRequest::ListServices(String::new())).await
            else {
                panic!("ListServices answered with something else")
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            let reflection = concat!(
                "grpc.reflection.",
                stringify!($version),
                ".ServerReflection"
            );
            for want in SERVICES.into_iter().chain([reflection]) {
                assert!(
                    names.iter().any(|n| n == want),
                    "{want} missing from {names:?}"
                );
            }

            let files = |answer: MessageResponse| -> Vec<prost_types::FileDescriptorProto> {
                let MessageResponse::FileDescriptorResponse(r) = answer else {
                    panic!("not a file descriptor: {answer:?}")
                };
                assert!(!r.file_descriptor_proto.is_empty());
                r.file_descriptor_proto
                    .iter()
                    .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
                    .collect()
            };
            let error_info = files(
                ask(MessageRequest::FileContainingSymbol(
                    "google.rpc.ErrorInfo".into(),
                ))
                .await,
            );
            assert!(
                error_info[0]
                    .message_type
                    .iter()
                    .any(|m| m.name() == "ErrorInfo"),
                "google.rpc.ErrorInfo must be resolvable"
            );

            // Envoy's ext_authz, served from the envoy-types crate: its method and types, and
            // every file it imports, resolve with no proto files on the client.
            let mut pending: Vec<prost_types::FileDescriptorProto> = files(
                ask(MessageRequest::FileContainingSymbol(
                    "envoy.service.auth.v3.Authorization.Check".into(),
                ))
                .await,
            );
            let check = pending[0]
                .service
                .iter()
                .find(|s| s.name() == "Authorization")
                .and_then(|s| s.method.iter().find(|m| m.name() == "Check"))
                .expect("the file declares Authorization.Check")
                .clone();
            assert_eq!(check.input_type(), ".envoy.service.auth.v3.CheckRequest");
            assert_eq!(check.output_type(), ".envoy.service.auth.v3.CheckResponse");
            for symbol in [
                "envoy.service.auth.v3.CheckRequest",
                "envoy.service.auth.v3.AttributeContext",
                "envoy.config.core.v3.HeaderValueOption",
            ] {
                files(ask(MessageRequest::FileContainingSymbol(symbol.into())).await);
            }
            let mut seen = std::collections::HashSet::new();
            while let Some(file) = pending.pop() {
                if !seen.insert(file.name().to_owned()) {
                    continue;
                }
                for import in &file.dependency {
                    if !seen.contains(import) {
                        pending.extend(files(
                            ask(MessageRequest::FileByFilename(import.clone())).await,
                        ));
                    }
                }
            }
            for want in [
                "envoy/service/auth/v3/external_auth.proto",
                "envoy/config/core/v3/base.proto",
                "google/rpc/status.proto",
                "validate/validate.proto",
            ] {
                assert!(seen.contains(want), "{want} not resolved: {seen:?}");
            }
            s.stop().await;
        }
    };
}

reflection_test!(reflection_lists_services_and_error_types, v1alpha);
reflection_test!(reflection_v1_lists_services_and_error_types, v1);

/// Health answers SERVING for the server and each service; on shutdown every watcher hears
/// NOT_SERVING while the server still drains, before it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_then_drains() {
    let mut s = TestServer::spawn(Backend::Sqlite).await;
    let mut health = HealthClient::new(s.channel.clone());
    let services = [
        "",
        "teamgate.v1.TeamService",
        "teamgate.v1.AuthzService",
        "teamgate.v1.IdentityService",
        "envoy.service.auth.v3.Authorization",
    ];
    let mut watches = Vec::new();
    for service in services {
        let request = || tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let r = health.check(request()).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
        // Opened before the shutdown: a new call during the drain would be refused.
        let mut watch = health.watch(request()).await.unwrap().into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push(watch);
    }

    let shutdown = tokio::spawn(s.running.take().unwrap().shutdown());
    for (service, watch) in services.iter().zip(&mut watches) {
        let next = tokio::time::timeout(Duration::from_secs(1), watch.message())
            .await
            .unwrap_or_else(|_| panic!("{service:?}: no health change within 1s of the shutdown"))
            .unwrap()
            .unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
    // The open watches are calls in flight: the drain waits for them until its timeout
    // (2 s in tests), so the server is still up when they hear NOT_SERVING.
    assert!(
        !shutdown.is_finished(),
        "NOT_SERVING must be announced during the drain, not after it"
    );
    shutdown.await.unwrap().unwrap();
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
