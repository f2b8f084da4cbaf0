//! The baseline: a tonic server whose Check handler does nothing but answer. Driven by the
//! same load generator, it shows what this machine, tonic and the load generator cost, so
//! teamgate's figures can be read as ratios that survive a noisy, shared machine.

use std::net::SocketAddr;

use teamgate::proto::teamgate::v1 as pb;
use teamgate::proto::teamgate::v1::authz_service_server::{AuthzService, AuthzServiceServer};
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

pub struct Noop;

#[tonic::async_trait]
impl AuthzService for Noop {
    async fn check(
        &self,
        _request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(pb::CheckResponse::default()))
    }

    async fn batch_check(
        &self,
        _request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        Err(Status::unimplemented("the no-op server answers Check only"))
    }

    async fn list_permissions(
        &self,
        _request: Request<pb::ListPermissionsRequest>,
    ) -> Result<Response<pb::ListPermissionsResponse>, Status> {
        Err(Status::unimplemented("the no-op server answers Check only"))
    }

    async fn lookup_organizations(
        &self,
        _request: Request<pb::LookupOrganizationsRequest>,
    ) -> Result<Response<pb::LookupOrganizationsResponse>, Status> {
        Err(Status::unimplemented("the no-op server answers Check only"))
    }
}

/// Serves until killed (the bench stops it when done).
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    Server::builder()
        .add_service(health_service)
        .add_service(AuthzServiceServer::new(Noop))
        .serve(listen)
        .await?;
    Ok(())
}
