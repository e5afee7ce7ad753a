//! The Prometheus endpoint both daemons serve (`--metrics-listen`): `GET /metrics` answers
//! the daemon's registry in the OpenMetrics text format, which Prometheus scrapes natively.
//! Gauges that describe state (jobs by state, queue depth, connected executors) are set by
//! the daemon's `refresh` just before each encoding, so a scrape always sees the present.

use std::future::Future;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets for durations from a millisecond to about an hour, in seconds.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 4.0, 12)
}

/// Messages on a daemon's gRPC streams, counted by direction (`sent`, `received`) and type.
#[derive(Debug, Clone, Default)]
pub struct StreamMessages(Family<[(&'static str, &'static str); 2], Counter>);

impl StreamMessages {
    /// Registers the counter in `registry` as `name`.
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.0.clone());
    }

    /// Counts one message.
    pub fn count(&self, direction: &'static str, kind: &'static str) {
        self.0
            .get_or_create(&[("direction", direction), ("type", kind)])
            .inc();
    }
}

/// Encodes `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Binds the metrics listener, with an error that names the flag.
pub async fn bind(address: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("--metrics-listen {address}: {e}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown`, answering with what `render`
/// returns (the registry's encoding after a refresh).
pub async fn serve<F, Fut>(listener: TcpListener, render: F, shutdown: CancellationToken)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    render().await,
                )
                    .into_response()
            }
        }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the metrics endpoint stopped");
    }
}
