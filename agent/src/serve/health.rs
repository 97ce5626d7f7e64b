//! The health endpoint the load balancer's target group checks, and `/status` for people.
//! `GET <path>` answers 503 with the phase as JSON until every service is up and healthy, then
//! 200; it also counts the ALB checker's consecutive 200s (User-Agent `ELB-HealthChecker/2.0`),
//! which is how berth knows the ALB sees it healthy when no target group ARN is configured.
//! `GET /status`: release, services, timings, last error. Never an environment value.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::watch;

use crate::release::ObjectRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Identity,
    Fetching,
    Pulling,
    Starting,
    Waiting,
    /// Warm pool: fetched and pulled, nothing started, waiting to go in service.
    Warmed,
    /// Every service is up and healthy: the endpoint answers 200.
    Ready,
    Draining,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Identity => "identity",
            Phase::Fetching => "fetching",
            Phase::Pulling => "pulling",
            Phase::Starting => "starting",
            Phase::Waiting => "waiting",
            Phase::Warmed => "warmed",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "identity" => Phase::Identity,
            "fetching" => Phase::Fetching,
            "pulling" => Phase::Pulling,
            "starting" => Phase::Starting,
            "waiting" => Phase::Waiting,
            "warmed" => Phase::Warmed,
            "ready" => Phase::Ready,
            "draining" => Phase::Draining,
            "failed" => Phase::Failed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: String,
}

/// What `/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: Phase,
    pub project: String,
    pub instance_id: Option<String>,
    pub release: Option<String>,
    pub objects: Vec<ObjectRecord>,
    pub services: Vec<ServiceStatus>,
    /// Seconds from process start to the start of each phase.
    pub timings: BTreeMap<String, f64>,
    /// Whether the load balancer has marked this instance healthy.
    pub in_service: bool,
    pub last_error: Option<String>,
}

/// Shared status, cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    status: Arc<Mutex<Status>>,
    started: Instant,
    /// Consecutive 200s answered to the ALB's checker.
    lb_streak: watch::Sender<u32>,
    /// Consecutive non-200s answered to the ALB's checker (while draining).
    lb_fail_streak: watch::Sender<u32>,
}

impl Health {
    pub fn new(project: &str, started: Instant) -> Health {
        let status = Status {
            phase: Phase::Identity,
            project: project.to_string(),
            instance_id: None,
            release: None,
            objects: vec![],
            services: vec![],
            timings: BTreeMap::from([("identity".to_string(), started.elapsed().as_secs_f64())]),
            in_service: false,
            last_error: None,
        };
        Health {
            status: Arc::new(Mutex::new(status)),
            started,
            lb_streak: watch::channel(0).0,
            lb_fail_streak: watch::channel(0).0,
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn phase(&self) -> Phase {
        self.snapshot().phase
    }

    pub fn set_phase(&self, phase: Phase) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.update(|s| {
            if s.phase != phase {
                s.phase = phase;
                s.timings
                    .entry(phase.as_str().to_string())
                    .or_insert(elapsed);
            }
        });
        tracing::info!(phase = phase.as_str(), "phase");
    }

    pub fn fail(&self, error: &str) {
        self.update(|s| s.last_error = Some(error.to_string()));
        self.set_phase(Phase::Failed);
    }

    /// Waits until the ALB's checker has had `threshold` consecutive 200s.
    pub async fn lb_streak_reaches(&self, threshold: u32) {
        let mut rx = self.lb_streak.subscribe();
        let _ = rx.wait_for(|n| *n >= threshold).await;
    }

    /// Waits until the ALB's checker has had `threshold` consecutive failures, counted from
    /// now on.
    pub async fn lb_fail_streak_reaches(&self, threshold: u32) {
        self.lb_fail_streak.send_replace(0);
        let mut rx = self.lb_fail_streak.subscribe();
        let _ = rx.wait_for(|n| *n >= threshold).await;
    }

    /// Counts passing checks from now on (after a drain, the old streak means nothing).
    pub fn reset_lb_streak(&self) {
        self.lb_streak.send_replace(0);
    }

    fn answer(&self, req: &Request<Incoming>, health_path: &str) -> (StatusCode, String) {
        let status = self.snapshot();
        match req.uri().path() {
            p if p == health_path => {
                let ready = status.phase == Phase::Ready;
                let from_lb = req
                    .headers()
                    .get(hyper::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ua| ua.starts_with("ELB-HealthChecker/"));
                if from_lb {
                    self.lb_streak
                        .send_modify(|n| *n = if ready { *n + 1 } else { 0 });
                    self.lb_fail_streak
                        .send_modify(|n| *n = if ready { 0 } else { *n + 1 });
                }
                let body = serde_json::json!({ "phase": status.phase, "release": status.release });
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, body.to_string())
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
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {addr} (health.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the endpoint now (so a taken port fails the boot at once), serves in the background.
pub async fn serve(
    addr: SocketAddr,
    path: String,
    health: Health,
) -> Result<SocketAddr, HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { addr, source })?;
    tracing::info!(%local, %path, "health endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (code, body) = health.answer(&req, &path);
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
