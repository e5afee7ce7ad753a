//! A TCP relay that holds every byte for a fixed time in each direction: a slow network link
//! on loopback, for the HTTP/2 flow-control figures (the kernel's netem is not available
//! here). Bandwidth is whatever loopback and the relay's copying allow; only latency is
//! added.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes read at once from either side.
const READ_SIZE: usize = 256 * 1024;
/// Reads held back per direction; enough for a few milliseconds at loopback speed.
const IN_FLIGHT: usize = 4096;

/// A running relay; it stops when dropped.
pub struct DelayRelay {
    /// `http://127.0.0.1:PORT` of the relay.
    pub address: String,
    stop: CancellationToken,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DelayRelay {
    /// Relays connections to `target` (`host:port`), delaying each direction by `one_way`.
    pub async fn start(target: String, one_way: Duration) -> anyhow::Result<DelayRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let accepting = stop.clone();
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    _ = accepting.cancelled() => return,
                };
                let target = target.clone();
                let stop = accepting.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pipe(client_read, server_write, one_way) => {}
                        _ = pipe(server_read, client_write, one_way) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(DelayRelay { address, stop })
    }
}

/// Copies `from` to `to`, each read leaving `delay` after it arrived.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + delay;
                    if tx
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
