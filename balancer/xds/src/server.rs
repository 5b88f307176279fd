//! The ADS gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world) and the
//! server that runs it: one task per stream feeds requests and new catalogs to a [`StreamState`] and sends
//! what it returns.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::stream::{Note, StreamState};
use crate::{Catalog, Error, Publisher, WeightsReceiver, XdsConfig};

/// Responses waiting to be written to one stream.
const STREAM_QUEUE: usize = 16;

/// A running ADS server. Dropping it stops the server and its publisher; clients keep what they have.
#[derive(Debug)]
pub struct XdsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    publisher: Publisher,
}

impl Drop for XdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsServer {
    /// Validates `config` against the services in `receivers`, binds `listen` (port 0 picks a free one) and
    /// serves ADS for them.
    pub async fn start(
        listen: SocketAddr,
        config: XdsConfig,
        receivers: Vec<(String, WeightsReceiver)>,
    ) -> Result<Self, Error> {
        config.validate(receivers.iter().map(|(s, _)| s.as_str()))?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
        let publisher = Publisher::spawn(config, receivers);
        let service = Ads {
            catalog: publisher.catalog(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the xDS (ADS) server stopped");
            }
        });
        tracing::info!(%addr, "xDS (ADS) server listening");
        Ok(Self {
            addr,
            task,
            stop: Some(stop),
            publisher,
        })
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The latest published catalog (what a new subscriber would receive).
    pub fn catalog(&self) -> watch::Receiver<Arc<Catalog>> {
        self.publisher.catalog()
    }

    /// Replaces the configuration and the services (a coordinator's reload): validated like at start, then
    /// pushed to every stream at the next interval; services not in `receivers` leave the resources.
    pub fn set_services(
        &self,
        config: XdsConfig,
        receivers: Vec<(String, WeightsReceiver)>,
    ) -> Result<(), Error> {
        config.validate(receivers.iter().map(|(s, _)| s.as_str()))?;
        self.publisher.set_services(config, receivers);
        Ok(())
    }

    /// Stops accepting streams and closes the open ones; clients keep their last resources.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // ADS streams never end by themselves: give the server a moment, then drop the connections.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), &mut self.task).await;
        self.task.abort();
    }
}

/// The tonic service.
#[derive(Debug, Clone)]
struct Ads {
    catalog: watch::Receiver<Arc<Catalog>>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if self.catalog.has_changed().is_err() {
            return Err(stopped());
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(serve_stream(
            peer,
            request.into_inner(),
            self.catalog.clone(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "Lateral's xDS server speaks state-of-the-world ADS only (api_type: GRPC)",
        ))
    }
}

async fn serve_stream(
    peer: String,
    mut inbound: Streaming<DiscoveryRequest>,
    catalog: watch::Receiver<Arc<Catalog>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut state = StreamState::new();
    let mut node = String::new();
    let mut updates = catalog.clone();
    loop {
        let responses = tokio::select! {
            request = inbound.message() => match request {
                Ok(Some(request)) => {
                    if let Some(n) = &request.node {
                        node = format!("{} ({})", n.id, n.user_agent_name);
                    }
                    let current = catalog.borrow().clone();
                    let (notes, response) = state.on_request(&request, &current);
                    for note in notes {
                        log(&peer, &node, note);
                    }
                    // A request may arrive before this task saw a new catalog: push what is due as well.
                    let mut responses: Vec<_> = response.into_iter().collect();
                    responses.extend(state.on_catalog(&current));
                    responses
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%peer, %node, %status, "ADS stream ended");
                    break;
                }
            },
            changed = updates.changed() => {
                let changed = changed.is_ok();
                if !changed {
                    // The server stopped (its publisher is gone): end the stream, so the client reconnects
                    // to another server of its ADS cluster (an HA standby). It keeps its last resources
                    // meanwhile; a stream kept open here would pin it to weights that never change again.
                    let _ = tx.send(Err(stopped())).await;
                    break;
                }
                let current = catalog.borrow().clone();
                state.on_catalog(&current)
            },
            () = tx.closed() => break,
        };
        for response in responses {
            tracing::debug!(%peer, %node, type_url = %response.type_url, version = %response.version_info,
                nonce = %response.nonce, resources = response.resources.len(), "xDS push");
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
    tracing::info!(%peer, %node, "ADS stream closed");
}

/// What a stream gets from a stopped server.
fn stopped() -> Status {
    Status::unavailable("this xDS server has stopped: reconnect to another")
}

fn log(peer: &str, node: &str, note: Note) {
    match note {
        Note::Subscribed { type_url, names } => {
            tracing::info!(%peer, %node, type_url = type_url.short(), ?names, "xDS subscription")
        }
        Note::Ack { type_url, version } => {
            tracing::debug!(%peer, %node, type_url = type_url.short(), %version, "xDS ACK")
        }
        Note::Nack {
            type_url,
            rejected,
            kept,
            message,
        } => tracing::warn!(
            %peer, %node, type_url = type_url.short(), %rejected, %kept, error_detail = %message,
            "xDS NACK: the client rejected the resources and keeps its last good version"
        ),
        Note::Stale { type_url, nonce } => {
            tracing::debug!(%peer, %node, type_url = type_url.short(), %nonce, "stale xDS request ignored")
        }
        Note::UnknownType(type_url) => {
            tracing::warn!(%peer, %node, %type_url, "xDS request for a type this server does not publish")
        }
    }
}
