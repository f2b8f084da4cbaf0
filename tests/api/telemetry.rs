//! Telemetry: spans and metrics reach a real OTLP/gRPC receiver started by the test, and
//! `/metrics` serves valid Prometheus text with the decision counter and latency histogram.
//!
//! Metrics are built per server, so the in-process servers of the other tests never mix into
//! these counts. Traces go through the process-wide `tracing` subscriber, so their test runs
//! the real `teamgate` binary as a child process pointed at the receiver.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::resource::v1::Resource;
use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_client::AuthzServiceClient;
use teamgate::proto::teamgate::v1::team_service_client::TeamServiceClient;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::helpers::{Backend, ChildGuard, TestServer, as_actor};
use crate::on_both_backends;

on_both_backends!(metrics_over_otlp_and_prometheus);

const CHECK: &str = "/teamgate.v1.AuthzService/Check";

// ---------------------------------------------------------------------------------------------
// An OTLP/gRPC receiver: keeps every export request it is sent.

#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

struct Collector {
    addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct SpanSeen {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

/// One exported data point of a counter (sum) or histogram, flattened.
#[derive(Debug, Clone)]
struct PointSeen {
    metric: String,
    kind: &'static str,
    attributes: HashMap<String, String>,
    /// The sum's value, or the histogram's count.
    value: f64,
    resource: HashMap<String, String>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn number(v: &Option<Number>) -> f64 {
    match v {
        Some(Number::AsInt(i)) => *i as f64,
        Some(Number::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn resource_attrs(r: &Option<Resource>) -> HashMap<String, String> {
    r.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default()
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Collector {
            addr,
            received,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<SpanSeen> {
        let mut out = Vec::new();
        for req in self.received.traces.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = resource_attrs(&rs.resource);
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push(SpanSeen {
                            name: s.name.clone(),
                            trace_id: s.trace_id.clone(),
                            span_id: s.span_id.clone(),
                            parent_span_id: s.parent_span_id.clone(),
                            attributes: attrs(&s.attributes),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every data point received, latest export last (metrics are cumulative).
    fn points(&self) -> Vec<PointSeen> {
        let mut out = Vec::new();
        for req in self.received.metrics.lock().unwrap().iter() {
            for rm in &req.resource_metrics {
                let resource = resource_attrs(&rm.resource);
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let mut push = |kind, a: &[KeyValue], value| {
                            out.push(PointSeen {
                                metric: m.name.clone(),
                                kind,
                                attributes: attrs(a),
                                value,
                                resource: resource.clone(),
                            })
                        };
                        match &m.data {
                            Some(Data::Sum(s)) => {
                                for p in &s.data_points {
                                    push("sum", &p.attributes, number(&p.value));
                                }
                            }
                            Some(Data::Gauge(g)) => {
                                for p in &g.data_points {
                                    push("gauge", &p.attributes, number(&p.value));
                                }
                            }
                            Some(Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    push("histogram", &p.attributes, p.count as f64);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        out
    }

    /// The latest value of `metric` whose attribute `key` is `value`.
    fn latest(&self, metric: &str, key: &str, value: &str) -> Option<f64> {
        self.points()
            .into_iter()
            .rev()
            .find(|p| {
                p.metric == metric && p.attributes.get(key).map(String::as_str) == Some(value)
            })
            .map(|p| p.value)
    }

    async fn wait_for(&self, what: &str, mut ready: impl FnMut(&Collector) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; spans: {:?}; metrics: {:?}",
                self.spans().iter().map(|s| &s.name).collect::<Vec<_>>(),
                self.points()
                    .iter()
                    .map(|p| &p.metric)
                    .collect::<std::collections::BTreeSet<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format.

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value `{s}`: {e}")),
    }
}

/// `{a="x",b="y\"z"}` → labels, and the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = rest[..eq].trim();
        if !is_name(key) || key.contains(':') {
            return Err(format!("bad label name `{key}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label `{key}` twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the whole exposition; any line that is not valid text format is an error.
fn parse_prometheus(body: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    for (n, line) in body.lines().enumerate() {
        let err = |e: String| format!("line {}: {e}: {line}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !is_name(name) {
                        return Err(err("bad metric name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    if types
                        .insert((*name).to_owned(), (*kind).to_owned())
                        .is_some()
                    {
                        return Err(err("TYPE twice".into()));
                    }
                }
                ["HELP", name, ..] if is_name(name) => {}
                ["HELP", ..] => return Err(err("bad HELP".into())),
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(err("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|e| err(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing text".into()));
        }
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        if !types.contains_key(family) && !types.contains_key(name) {
            return Err(err("sample without a TYPE line".into()));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn sample<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = resp.text().await.unwrap();
    parse_prometheus(&body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{body}"))
}

#[test]
fn the_text_format_parser_rejects_junk() {
    let ok = concat!(
        "# HELP a_total A.\n",
        "# TYPE a_total counter\n",
        "a_total{x=\"1\",y=\"q\\\"\"} 3\n",
        "# TYPE h histogram\n",
        "h_bucket{le=\"+Inf\"} 2\n",
        "h_sum 0.5\n",
        "h_count 2\n",
    );
    let s = parse_prometheus(ok).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].labels["y"], "q\"");
    assert_eq!(s[1].labels["le"], "+Inf");
    assert_eq!(s[1].value, 2.0);
    for bad in [
        "# TYPE a counter\na{x=1} 3\n",
        "# TYPE a counter\na 3 4 5\n",
        "b 1\n",
        "# TYPE a counter\na{x=\"1\"} three\n",
        "# TYPE 1a counter\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic that produces every decision result, a client error and a batch.

struct Clients {
    team: TeamServiceClient<Channel>,
    authz: AuthzServiceClient<Channel>,
}

impl Clients {
    async fn connect(addr: SocketAddr) -> Clients {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Clients {
            team: TeamServiceClient::new(channel.clone()),
            authz: AuthzServiceClient::new(channel),
        }
    }

    async fn check(&self, org: &str, user: &str, permission: &str) -> Result<pb::Reason, Status> {
        let resp = self
            .authz
            .clone()
            .check(pb::CheckRequest {
                org_id: org.into(),
                user_id: user.into(),
                permission: permission.into(),
                consistency: None,
            })
            .await?;
        Ok(resp.into_inner().reason())
    }

    /// Returns (org id, owner email, invitation token): what must never appear in a span.
    async fn traffic(&self) -> (String, String, String) {
        let email = format!("owner-{}@example.com", uuid::Uuid::now_v7().simple());
        let created = self
            .team
            .clone()
            .create_organization(pb::CreateOrganizationRequest {
                name: "Observed".into(),
                plan: String::new(),
                owner_ref: Some(pb::create_organization_request::OwnerRef::Owner(
                    pb::NewUser {
                        email: email.clone(),
                        first_name: "Olivia".into(),
                        last_name: "Owner".into(),
                    },
                )),
            })
            .await
            .unwrap()
            .into_inner();
        let org = created.organization.unwrap().id;
        let owner = created.owner.unwrap().user_id;
        let token = self
            .team
            .clone()
            .invite_member(as_actor(
                &owner,
                pb::InviteMemberRequest {
                    org_id: org.clone(),
                    email: format!("m-{}@example.com", uuid::Uuid::now_v7().simple()),
                    first_name: "Mia".into(),
                    last_name: "Member".into(),
                    role: "member".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token;
        let member = self
            .team
            .clone()
            .accept_invitation(pb::AcceptInvitationRequest {
                token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .member
            .unwrap()
            .user_id;
        let stranger = uuid::Uuid::now_v7().to_string();
        let nowhere = uuid::Uuid::now_v7().to_string();
        assert_eq!(
            self.check(&org, &owner, "projects.view").await.unwrap(),
            pb::Reason::Allowed
        );
        // Twice: the second is answered by the in-process cache.
        assert_eq!(
            self.check(&org, &owner, "projects.view").await.unwrap(),
            pb::Reason::Allowed
        );
        assert_eq!(
            self.check(&org, &stranger, "projects.view").await.unwrap(),
            pb::Reason::NotMember
        );
        assert_eq!(
            self.check(&nowhere, &owner, "projects.view").await.unwrap(),
            pb::Reason::OrgNotFound
        );
        assert_eq!(
            self.check(&org, &member, "org.delete").await.unwrap(),
            pb::Reason::MissingPermission
        );
        let err = self.check(&org, &owner, "projects.fly").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let batch = self
            .authz
            .clone()
            .batch_check(pb::BatchCheckRequest {
                items: vec![pb::CheckItem {
                    org_id: org.clone(),
                    user_id: stranger.clone(),
                    permission: "org.delete".into(),
                }],
                consistency: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.results.len(), 1);
        (org, email, token)
    }
}

/// Checks a scrape: every decision result counted, latency by method and code, cache levels,
/// outbox backlog.
fn assert_scrape(samples: &[Sample]) {
    let decisions = |result| {
        sample(
            samples,
            "teamgate_authz_decisions_total",
            &[("result", result)],
        )
        .unwrap_or_else(|| panic!("no decision counter for {result}: {samples:#?}"))
        .value
    };
    assert_eq!(decisions("allowed"), 2.0);
    assert_eq!(decisions("not_member"), 2.0, "one check and one batch item");
    assert_eq!(decisions("org_not_found"), 1.0);
    assert_eq!(decisions("missing_permission"), 1.0);
    let count = |method, code| {
        sample(
            samples,
            "teamgate_rpc_duration_seconds_count",
            &[("method", method), ("code", code)],
        )
        .map(|s| s.value)
    };
    assert_eq!(count(CHECK, "OK"), Some(5.0));
    assert_eq!(count(CHECK, "INVALID_ARGUMENT"), Some(1.0));
    assert_eq!(
        count("/teamgate.v1.AuthzService/BatchCheck", "OK"),
        Some(1.0)
    );
    let inf = sample(
        samples,
        "teamgate_rpc_duration_seconds_bucket",
        &[("method", CHECK), ("code", "OK"), ("le", "+Inf")],
    )
    .expect("histogram buckets");
    assert_eq!(inf.value, 5.0);
    assert!(
        sample(
            samples,
            "teamgate_rpc_duration_seconds_sum",
            &[("method", CHECK)]
        )
        .is_some_and(|s| s.value > 0.0)
    );
    let lookups = |level| {
        sample(samples, "teamgate_cache_lookups_total", &[("level", level)])
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no cache lookups for {level}"))
    };
    assert!(lookups("local") >= 1.0, "the repeated check hit the cache");
    assert!(lookups("db") >= 3.0);
    assert!(sample(samples, "teamgate_outbox_backlog", &[]).is_some());
    assert!(sample(samples, "target_info", &[("service_name", "teamgate")]).is_some());
}

async fn metrics_over_otlp_and_prometheus(b: Backend) {
    let collector = Collector::start().await;
    let s = TestServer::spawn_with(b, |c| {
        c.telemetry.otlp_endpoint = Some(collector.endpoint());
        c.telemetry.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics_addr = s.running.as_ref().unwrap().metrics_addr.expect("bound");
    assert_ne!(metrics_addr.port(), 0);
    assert_ne!(metrics_addr, s.running.as_ref().unwrap().addr);
    let clients = Clients::connect(s.running.as_ref().unwrap().addr).await;
    clients.traffic().await;
    assert_scrape(&scrape(metrics_addr).await);
    let missing = reqwest::get(format!("http://{metrics_addr}/nope"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Shutting down sends the final collection to the collector.
    s.stop().await;
    collector
        .wait_for("the decision counter over OTLP", |c| {
            c.latest("teamgate.authz.decisions", "result", "allowed")
                .is_some()
        })
        .await;
    assert_eq!(
        collector.latest("teamgate.authz.decisions", "result", "allowed"),
        Some(2.0)
    );
    assert_eq!(
        collector.latest("teamgate.authz.decisions", "result", "org_not_found"),
        Some(1.0)
    );
    let points = collector.points();
    let latency = points
        .iter()
        .rev()
        .find(|p| {
            p.metric == "teamgate.rpc.duration"
                && p.attributes.get("method").map(String::as_str) == Some(CHECK)
                && p.attributes.get("code").map(String::as_str) == Some("OK")
        })
        .expect("the latency histogram over OTLP");
    assert_eq!(latency.kind, "histogram");
    assert_eq!(latency.value, 5.0);
    assert_eq!(latency.resource["service.name"], "teamgate");
    assert_eq!(
        latency.resource["service.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        points
            .iter()
            .any(|p| p.metric == "teamgate.cache.lookups" && p.kind == "sum")
    );
    assert!(points.iter().any(|p| p.metric == "teamgate.outbox.backlog"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_telemetry_by_default() {
    let s = TestServer::spawn(Backend::Sqlite).await;
    assert_eq!(s.running.as_ref().unwrap().metrics_addr, None);
    let (org, owner) = s.org("Quiet", "").await;
    assert!(s.allowed(&org, &owner, "projects.view").await);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary: traces and metrics from `teamgate serve`, flushed on SIGTERM.

/// Reads the child's JSON logs until it says where it listens: (gRPC, /metrics).
fn addresses(
    stderr: std::process::ChildStderr,
) -> (SocketAddr, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if std::env::var("TEST_LOG").is_ok() {
                eprintln!("[teamgate] {line}");
            }
            if tx.send(line).is_err() {
                // Keep draining so the child never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut grpc, mut metrics) = (None, None);
    let mut seen = Vec::new();
    while grpc.is_none() || metrics.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "teamgate did not start ({e}); it said:\n{}",
                seen.join("\n")
            )
        });
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            seen.push(line);
            continue;
        };
        let field = |k: &str| {
            v["fields"][k]
                .as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
        };
        grpc = grpc.or_else(|| {
            (v["fields"]["message"] == "teamgate listening")
                .then(|| field("addr"))
                .flatten()
        });
        metrics = metrics.or_else(|| field("metrics_addr"));
        seen.push(line);
    }
    (grpc.unwrap(), metrics.unwrap(), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_and_metrics_from_the_binary() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("teamgate.db");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teamgate"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "TEAMGATE__DATABASE__URL",
            format!("sqlite://{}?mode=rwc", db.display()),
        )
        .env("TEAMGATE__LISTEN", "127.0.0.1:0")
        .env("TEAMGATE__LOG__FORMAT", "json")
        .env("TEAMGATE__TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")
        .env("TEAMGATE__TELEMETRY__SERVICE_NAME", "teamgate-under-test")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(Some(cmd.spawn().expect("teamgate starts")));
    let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
    let (grpc, metrics_addr, _logs) = addresses(stderr);

    let clients = Clients::connect(grpc).await;
    let (org, owner_email, token) = clients.traffic().await;

    // Spans arrive while the server runs (batched every 100 ms).
    collector
        .wait_for("the Check span", |c| {
            c.spans().iter().any(|s| {
                s.name == "rpc" && s.attributes.get("method").map(String::as_str) == Some(CHECK)
            })
        })
        .await;
    // Metrics too (every 200 ms).
    collector
        .wait_for(
            "the latency histogram and decision counter over OTLP",
            |c| {
                c.latest("teamgate.authz.decisions", "result", "allowed") == Some(2.0)
                    && c.points().iter().any(|p| {
                        p.metric == "teamgate.rpc.duration"
                            && p.attributes.get("method").map(String::as_str) == Some(CHECK)
                    })
            },
        )
        .await;
    let samples = scrape(metrics_addr).await;
    assert!(
        sample(
            &samples,
            "teamgate_authz_decisions_total",
            &[("result", "allowed")]
        )
        .is_some_and(|s| s.value == 2.0)
    );
    assert!(
        sample(
            &samples,
            "target_info",
            &[("service_name", "teamgate-under-test")]
        )
        .is_some()
    );

    // SIGTERM: drain, flush, exit 0.
    let status = child.terminate().await;
    assert!(status.success(), "{status:?}");

    let spans = collector.spans();
    let check = spans
        .iter()
        .find(|s| s.name == "rpc" && s.attributes.get("method").map(String::as_str) == Some(CHECK))
        .unwrap();
    assert_eq!(check.resource["service.name"], "teamgate-under-test");
    assert_eq!(check.resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert!(check.parent_span_id.is_empty(), "an RPC starts its trace");
    assert!(check.attributes.contains_key("request_id"));
    assert!(check.attributes.contains_key("latency_ms"));

    // The decision, with org and permission, inside an RPC's trace.
    let decided = spans
        .iter()
        .find(|s| {
            s.name == "decisions.check"
                && s.attributes.get("decision").map(String::as_str) == Some("allowed")
        })
        .expect("a decisions.check span");
    assert_eq!(decided.attributes["org_id"], org);
    assert_eq!(decided.attributes["permission"], "projects.view");
    let in_trace = |name: &str| {
        spans
            .iter()
            .any(|s| s.name == name && s.trace_id == decided.trace_id)
    };
    assert!(
        spans.iter().any(|s| s.name == "rpc"
            && s.trace_id == decided.trace_id
            && s.parent_span_id.is_empty())
    );
    assert!(in_trace("decisions.subjects"));
    assert!(in_trace("cache.get"));
    assert!(
        in_trace("decisions.load"),
        "the first check reads the database"
    );
    // Store queries, as children within the trace.
    let query = spans
        .iter()
        .find(|s| {
            s.trace_id == decided.trace_id
                && s.attributes.get("db.system").map(String::as_str) == Some("sqlite")
        })
        .expect("a query span in the check's trace");
    assert!(!query.parent_span_id.is_empty());
    assert!(spans.iter().all(|s| s.span_id.len() == 8));
    // Background polling (the outbox worker every 500 ms, the database health watch) never
    // starts traces of its own: a query span is always inside something.
    let roots: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert!(
        roots
            .iter()
            .all(|s| !s.attributes.contains_key("db.system")),
        "roots: {:?}",
        roots.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // Never an email (or anything that carries one) in an attribute.
    for s in &spans {
        for (k, v) in &s.attributes {
            assert!(
                !v.contains(&owner_email) && !v.contains("@example.com") && !v.contains(&token),
                "{} {k}={v}",
                s.name
            );
        }
    }
}
