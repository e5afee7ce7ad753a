//! A channel to whichever of several orchestrator replicas leads. Replicas on one
//! PostgreSQL database elect one leader; the others answer every call but health with
//! UNAVAILABLE and the leader's address in the `shoal-leader` metadata. [`Replicas`]
//! sends each call to the replica it believes leads, and moves on when that one is
//! unreachable or answers as a standby: to the replica the standby named if it is one of
//! the addresses given, else to the next. The call that found out still fails; the
//! caller's retry (every client of the orchestrator retries UNAVAILABLE) reaches the
//! leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::Channel;

/// The metadata key of a standby's UNAVAILABLE answer that holds the leader's address.
pub const LEADER_HEADER: &str = "shoal-leader";

/// Channels to each replica, and which one is believed to lead.
#[derive(Debug, Clone)]
pub struct Replicas {
    replicas: Arc<[(String, Channel)]>,
    current: Arc<AtomicUsize>,
}

impl Replicas {
    /// `replicas`: each address (as given) with its channel; the first is tried first.
    pub fn new(replicas: Vec<(String, Channel)>) -> Self {
        assert!(!replicas.is_empty(), "at least one orchestrator address");
        Replicas {
            replicas: replicas.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The address calls go to now.
    pub fn current(&self) -> &str {
        &self.replicas[self.index()].0
    }

    /// Every address, in the order given.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().map(|(address, _)| address.as_str())
    }

    /// Sends calls to the replica at position `index` from now on.
    pub fn prefer(&self, index: usize) {
        self.current
            .store(index % self.replicas.len(), Ordering::Relaxed);
    }

    fn index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.replicas.len()
    }

    /// After the call sent to `from` found it is not the leader: where to go next. A
    /// replica that already moved on (another call found out first) is left alone.
    fn move_on(&self, from: usize, named: Option<&str>) {
        let count = self.replicas.len();
        let to = named
            .and_then(|leader| {
                self.replicas
                    .iter()
                    .position(|(address, _)| same_address(address, leader))
            })
            .filter(|&to| to != from)
            .unwrap_or((from + 1) % count);
        let _ = self
            .current
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The addresses of `list` (`--orchestrator`): comma-separated, each `http(s)://host:port`
/// or a bare `host:port` (http).
pub fn parse_addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            if address.contains("://") {
                address.to_owned()
            } else {
                format!("http://{address}")
            }
        })
        .collect()
}

impl From<Channel> for Replicas {
    fn from(channel: Channel) -> Self {
        Replicas::new(vec![(String::new(), channel)])
    }
}

/// Whether `given` (`http://host:port`, `https://...`, or `host:port`) is the address a
/// leader recorded (`host:port`, or a URL).
fn same_address(given: &str, recorded: &str) -> bool {
    let bare = |address: &str| {
        address
            .split_once("://")
            .map_or(address, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_owned()
    };
    bare(given) == bare(recorded)
}

impl Service<http::Request<Body>> for Replicas {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    /// Readiness is the chosen channel's, awaited in the call: which one is chosen can
    /// change between the two.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let index = self.index();
        let mut channel = self.replicas[index].1.clone();
        let replicas = self.clone();
        Box::pin(async move {
            let answered = async {
                futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            if replicas.replicas.len() > 1 {
                match &answered {
                    Err(_) => replicas.move_on(index, None),
                    Ok(response) => {
                        if let Some(leader) = response.headers().get(LEADER_HEADER) {
                            replicas.move_on(index, leader.to_str().ok());
                        }
                    }
                }
            }
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(addresses: &[&str]) -> Replicas {
        let channels = addresses
            .iter()
            .map(|a| {
                let channel = Channel::from_shared(format!("http://{a}"))
                    .expect("address")
                    .connect_lazy();
                (format!("http://{a}"), channel)
            })
            .collect();
        Replicas::new(channels)
    }

    #[test]
    fn address_lists_are_split_and_completed() {
        assert_eq!(
            parse_addresses("a:1, https://b:2 ,,c:3"),
            ["http://a:1", "https://b:2", "http://c:3"]
        );
        assert!(parse_addresses(" , ").is_empty());
    }

    #[tokio::test]
    async fn a_standby_that_names_a_listed_leader_sends_calls_there() {
        let set = replicas(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        set.move_on(0, Some("127.0.0.1:3"));
        assert_eq!(set.current(), "http://127.0.0.1:3");
        // A leader that is not listed, or none: the next one.
        set.move_on(2, Some("10.0.0.9:7070"));
        assert_eq!(set.current(), "http://127.0.0.1:1");
        set.move_on(0, None);
        assert_eq!(set.current(), "http://127.0.0.1:2");
        // A call that found out late changes nothing: another already moved on.
        set.move_on(0, None);
        assert_eq!(set.current(), "http://127.0.0.1:2");
        // A standby that knows no leader (empty): the next one.
        set.move_on(1, Some(""));
        assert_eq!(set.current(), "http://127.0.0.1:3");
        set.move_on(2, Some("127.0.0.1:2"));
        assert_eq!(set.current(), "http://127.0.0.1:2");
        // A standby naming itself (it was just elected) is not a reason to stay.
        set.move_on(1, Some("http://127.0.0.1:2/"));
        assert_eq!(set.current(), "http://127.0.0.1:3");
    }
}
