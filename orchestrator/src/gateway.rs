//! A trustless IPFS HTTP gateway over the content store, so IPFS tooling can fetch what
//! Shoal stores: `GET /ipfs/<cid>[/path]` with `?format=raw` (one block, verifiable
//! against its CID) or `?format=car` (the DAG as a CARv1, depth-first), or the `Accept`
//! types `application/vnd.ipld.raw` / `application/vnd.ipld.car`. Without a format, a file
//! is served as its bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use shoal::content::cid::{ContentId, DAG_PB};
use shoal::proto::{EntryKind, download_response};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Orchestrator;
use crate::content::ContentStore;
use crate::error::Error;

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";

/// Serves the gateway on `listener` until `shutdown`.
pub async fn serve(
    orchestrator: Arc<Orchestrator>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new()
        .route("/ipfs/{*rest}", axum::routing::get(get_ipfs))
        .with_state(orchestrator);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the IPFS gateway stopped");
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Core(_) | Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::FailedPrecondition(_) => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn get_ipfs(
    State(orchestrator): State<Arc<Orchestrator>>,
    Path(rest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (cid_text, path) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let path = path.trim_end_matches('/');
    let Ok(cid) = cid_text.parse::<ContentId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{cid_text:?} is not a CID"),
        );
    };
    let query_format = uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "format")
            .map(|(_, v)| v.to_owned())
    });
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = query_format.unwrap_or_else(|| {
        if accept.contains(RAW) {
            "raw".into()
        } else if accept.contains(CAR) {
            "car".into()
        } else {
            String::new()
        }
    });
    let content = orchestrator.content().clone();
    let resolved = match content.resolve(&cid, path).await {
        Ok(resolved) => resolved,
        Err(e) => return error(status_of(&e), e.to_string()),
    };
    match format.as_str() {
        "raw" => match content.get_block(&resolved.cid).await {
            Ok(block) => ([(header::CONTENT_TYPE, RAW)], block).into_response(),
            Err(e) => error(status_of(&e), e.to_string()),
        },
        "car" => car_response(content, cid, path.to_owned(), resolved.cid),
        "" if resolved.kind == EntryKind::File => file_response(content, resolved.cid).await,
        "" => error(
            StatusCode::NOT_IMPLEMENTED,
            "directory listings are not served; ask for ?format=car or ?format=raw".into(),
        ),
        other => error(
            StatusCode::BAD_REQUEST,
            format!("unknown format {other:?} (raw or car)"),
        ),
    }
}

async fn file_response(content: ContentStore, cid: ContentId) -> Response {
    let stream = match content.download(&cid, "", 0).await {
        Ok(stream) => stream,
        Err(e) => return error(status_of(&e), e.to_string()),
    };
    let bytes = stream.filter_map(|message| match message {
        Ok(message) => match message.item {
            Some(download_response::Item::Data(data)) => Some(Ok(data)),
            _ => None,
        },
        Err(status) => Some(Err(std::io::Error::other(status.message().to_owned()))),
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(bytes),
    )
        .into_response()
}

/// A CARv1 with `root` as its root: the blocks of the directories along `path`, then the
/// whole DAG under `target`, depth-first, each block once.
fn car_response(
    content: ContentStore,
    root: ContentId,
    path: String,
    target: ContentId,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let result = write_car(&content, root, &path, target, &tx).await;
        if let Err(e) = result {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    (
        [(header::CONTENT_TYPE, CAR)],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn write_car(
    content: &ContentStore,
    root: ContentId,
    path: &str,
    target: ContentId,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Error> {
    let send = |bytes: Bytes| async move { tx.send(Ok(bytes)).await.is_ok() };
    if !send(car_header(&root)).await {
        return Ok(());
    }
    // The path's directory blocks, so a client can verify the walk from the root.
    let mut current = root;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let block = content.get_block(&current).await?;
        if !send(car_block(&current, &block)).await {
            return Ok(());
        }
        let (node, _) = shoal::content::unixfs::decode_node(&block)?;
        let link = node
            .links
            .iter()
            .find(|l| l.name.as_deref() == Some(segment))
            .ok_or_else(|| Error::NotFound(format!("no {segment:?} below {current}")))?;
        current = shoal::content::unixfs::link_cid(link)?;
    }
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![target];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let block = content.get_block(&cid).await?;
        if cid.codec() == DAG_PB {
            let (node, _) = shoal::content::unixfs::decode_node(&block)?;
            for link in node.links.iter().rev() {
                stack.push(shoal::content::unixfs::link_cid(link)?);
            }
        }
        if !send(car_block(&cid, &block)).await {
            return Ok(());
        }
    }
    Ok(())
}

fn varint(mut value: u64, out: &mut BytesMut) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// The CARv1 header: a length-prefixed DAG-CBOR map `{"roots": [root], "version": 1}`.
fn car_header(root: &ContentId) -> Bytes {
    let cid = root.to_bytes();
    let mut cbor = BytesMut::new();
    cbor.put_u8(0xa2); // map of 2
    cbor.put_u8(0x65); // text(5)
    cbor.put_slice(b"roots");
    cbor.put_u8(0x81); // array of 1
    cbor.put_slice(&[0xd8, 0x2a]); // tag 42: a CID
    cbor.put_u8(0x58); // bytes, 1-byte length
    cbor.put_u8((cid.len() + 1) as u8);
    cbor.put_u8(0x00); // the multibase identity prefix DAG-CBOR requires
    cbor.put_slice(&cid);
    cbor.put_u8(0x67); // text(7)
    cbor.put_slice(b"version");
    cbor.put_u8(0x01);
    let mut out = BytesMut::new();
    varint(cbor.len() as u64, &mut out);
    out.put_slice(&cbor);
    out.freeze()
}

/// One CAR section: length, CID bytes, block bytes.
fn car_block(cid: &ContentId, block: &[u8]) -> Bytes {
    let cid = cid.to_bytes();
    let mut out = BytesMut::with_capacity(block.len() + cid.len() + 10);
    varint((cid.len() + block.len()) as u64, &mut out);
    out.put_slice(&cid);
    out.put_slice(block);
    out.freeze()
}
