//! The health endpoint the load balancer's target group checks, and `/status` for people.
//! `GET <path>` answers 503 with the phase as JSON until every service is up and healthy, then
//! 200; it also counts the ALB checker's consecutive answers (User-Agent
//! `ELB-HealthChecker/2.0`), which is how berth knows what the ALB sees when no target group ARN
//! is configured. `GET /status`: release, services, timings, last error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::state::{AgentState, Phase};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} (health.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the health path answers.
#[derive(Debug, Serialize)]
struct HealthBody<'a> {
    phase: Phase,
    release: Option<&'a str>,
}

fn answer(state: &AgentState, req: &Request<Incoming>, health_path: &str) -> (StatusCode, String) {
    let status = state.snapshot();
    match req.uri().path() {
        p if p == health_path => {
            let ready = status.phase == Phase::Ready;
            let from_lb = req
                .headers()
                .get(hyper::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.starts_with("ELB-HealthChecker/"));
            if from_lb {
                state.record_lb_check(ready);
            }
            let body = HealthBody {
                phase: status.phase,
                release: status.release.as_deref(),
            };
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, serde_json::to_string(&body).unwrap_or_default())
        }
        "/status" => (
            StatusCode::OK,
            serde_json::to_string_pretty(&status).unwrap_or_default(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found\"}".to_string(),
        ),
    }
}

/// Binds the endpoint now (so a taken port fails the boot at once), serves in the background.
pub async fn serve(
    addr: SocketAddr,
    path: String,
    state: AgentState,
) -> Result<SocketAddr, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(%local, %path, "health endpoint listening");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: back off rather than spin.
                    tracing::warn!(error = %e, "health endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (code, body) = answer(&state, &req, &path);
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = code;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
