//! A Workload API client over a Unix socket (used by the `api` and `healthcheck` commands and by tests).
//! Every request carries the `workload.spiffe.io: true` header.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::workload::SECURITY_HEADER;

/// Errors connecting to the Workload API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the Workload API at {path}: {source}")]
    Connect { path: PathBuf, source: tonic::transport::Error },
}

/// Adds the security header to every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecurityHeader;

impl Interceptor for SecurityHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(SECURITY_HEADER, tonic::metadata::MetadataValue::from_static("true"));
        Ok(req)
    }
}

pub type WorkloadClient = SpiffeWorkloadApiClient<InterceptedService<Channel, SecurityHeader>>;

/// A channel to the Unix socket at `path` (no header added).
pub async fn channel(path: &Path) -> Result<Channel, ClientError> {
    let socket = path.to_owned();
    // The URI is only a label; the connector dials the socket.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(5));
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| ClientError::Connect { path: path.to_owned(), source })
}

/// A Workload API client for the socket at `path`, sending the security header.
pub async fn connect(path: &Path) -> Result<WorkloadClient, ClientError> {
    Ok(SpiffeWorkloadApiClient::with_interceptor(channel(path).await?, SecurityHeader))
}
