//! One request, client to backend: the per-connection upstream link, hop-by-hop headers, and
//! the response body that keeps the request in flight until it is fully sent. This is the hot
//! path (the proxy is benchmarked against nginx): no work here that a request does not need.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::routes::{InFlight, Routes};

/// A response body that keeps its request in flight until it is fully sent (or dropped).
pub(super) enum ProxyBody {
    Upstream { body: Incoming, inflight: InFlight },
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match this {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Local(full) => {
                return Pin::new(full)
                    .poll_frame(cx)
                    .map_err(|never: Infallible| match never {})
            }
        };
        if let (
            Poll::Ready(None) | Poll::Ready(Some(Err(_))),
            ProxyBody::Upstream { inflight, .. },
        ) = (&polled, this)
        {
            inflight.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

/// A response the proxy makes itself (503 without a route, 502 when the backend fails).
fn local(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = code;
    resp
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, not the message.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Reuse an idle upstream connection only this soon: a backend may close idle keep-alive
/// connections (5 s is a common timeout), and a request must not race that close.
const IDLE_REUSE: Duration = Duration::from_secs(2);

/// One client connection's upstream connection, 1:1 (as nginx's upstream keep-alive does), so no
/// request waits on a shared pool. Reopened when the route changes, or after it idled.
#[derive(Default)]
pub(super) struct Upstream {
    link: tokio::sync::Mutex<Option<Link>>,
}

struct Link {
    backend: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
    last_used: Instant,
}

async fn connect(backend: SocketAddr) -> Result<Link, String> {
    let stream = tokio::net::TcpStream::connect(backend)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Link {
        backend,
        sender,
        last_used: Instant::now(),
    })
}

impl Upstream {
    async fn send(
        &self,
        backend: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let mut slot = self.link.lock().await;
        let mut req = req;
        // A kept-alive connection the backend has just closed (busybox httpd closes after every
        // response) hands the request back unsent: it is retried once on a new connection, so
        // that race never becomes a 502.
        for attempt in 0..2 {
            let reusable = slot.as_ref().is_some_and(|l| {
                l.backend == backend && !l.sender.is_closed() && l.last_used.elapsed() < IDLE_REUSE
            });
            if !reusable || attempt > 0 {
                *slot = Some(connect(backend).await?);
            }
            let Some(link) = slot.as_mut() else {
                return Err("no upstream connection".into());
            };
            if link.sender.ready().await.is_err() {
                *slot = None;
                continue;
            }
            let result = link.sender.try_send_request(req).await;
            link.last_used = Instant::now();
            match result {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    *slot = None;
                    match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(e.into_error().to_string()),
                    }
                }
            }
        }
        Err("the backend closed the connection twice".into())
    }
}

/// Sends `req` from the client at `peer` to the active backend and returns its response.
pub(super) async fn forward(
    routes: &Routes,
    upstream: &Upstream,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(backend) = routes.current() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no backend\n");
    };
    // Origin-form (`/path?query`), as a server expects from a client; some (busybox httpd)
    // refuse the absolute form.
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    // The client's Host passes through (the app sees the name it was called by); an HTTP/1.0
    // request without one gets the backend's.
    if !req.headers().contains_key(hyper::header::HOST) {
        if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

    let inflight = InFlight::start(&backend.counters);
    match upstream.send(backend.addr, req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::Upstream { body, inflight })
        }
        Err(e) => {
            drop(inflight);
            tracing::warn!(backend = %backend.addr, error = %e, "upstream request failed");
            local(StatusCode::BAD_GATEWAY, "bad gateway\n")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }
}
