//! Is a color healthy? One look at each of its containers (running, not unhealthy), and a GET on
//! `proxy.health_path` when one is configured: before the switch (the gate) and while the
//! new release is watched after it ([`super::analysis`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::{UpgradeError, Upgrader};
use crate::engine::docker::{DockerError, HealthStatusEnum};

/// Why a color is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("inspecting the container")]
    Inspect(#[source] DockerError),
    #[error("container stopped (exit code {code})")]
    Stopped { code: i64 },
    /// The healthcheck's own output stays in Docker's log (and `docker inspect`): it may print
    /// what the app is configured with.
    #[error("unhealthy (its healthcheck failed)")]
    Unhealthy,
    #[error("GET {path} answered {code}")]
    Status { path: String, code: u16 },
    #[error("GET {path} on {backend}")]
    Get {
        path: String,
        backend: SocketAddr,
        source: GetError,
    },
    #[error("no answer yet")]
    NoAnswer,
}

/// What went wrong with one GET.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("connect")]
    Connect(#[source] std::io::Error),
    #[error("HTTP")]
    Http(#[source] hyper::Error),
    #[error("bad request")]
    Request(#[source] hyper::http::Error),
    #[error("no answer within 2s")]
    Timeout,
}

impl Upgrader<'_> {
    /// One look at a serving container: running, not unhealthy, and (with
    /// `proxy.health_path`) answering 2xx there.
    pub(super) async fn check(
        &self,
        id: &str,
        backend: Option<SocketAddr>,
    ) -> Result<(), ProbeError> {
        let info = self
            .engine
            .inspect_container(id)
            .await
            .map_err(ProbeError::Inspect)?;
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(ProbeError::Stopped {
                code: state.exit_code.unwrap_or(-1),
            });
        }
        if let Some(h) = &state.health {
            if h.status == Some(HealthStatusEnum::UNHEALTHY) {
                let output = h
                    .log
                    .as_ref()
                    .and_then(|l| l.last())
                    .and_then(|l| l.output.as_deref());
                tracing::warn!(container = %id, output = output.unwrap_or("").trim(), "healthcheck failed");
                return Err(ProbeError::Unhealthy);
            }
        }
        if let (Some(path), Some(backend)) = (&self.config.proxy.health_path, backend) {
            let code = probe(backend, path).await?;
            if !(200..300).contains(&code) {
                return Err(ProbeError::Status {
                    path: path.clone(),
                    code,
                });
            }
        }
        Ok(())
    }

    /// Before the switch: GET `proxy.health_path` must answer 2xx on every backend (when
    /// configured), each probed on its own, all within `ready_secs`.
    pub(super) async fn gate(
        &self,
        release: &str,
        backends: &[SocketAddr],
    ) -> Result<(), UpgradeError> {
        let Some(path) = &self.config.proxy.health_path else {
            return Ok(());
        };
        try_join_all(backends.iter().map(|b| self.gate_one(release, path, *b))).await?;
        Ok(())
    }

    async fn gate_one(
        &self,
        release: &str,
        path: &str,
        backend: SocketAddr,
    ) -> Result<(), UpgradeError> {
        let secs = self.config.timeouts.ready_secs;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = ProbeError::NoAnswer;
        while Instant::now() < deadline {
            match probe(backend, path).await {
                Ok(code) if (200..300).contains(&code) => return Ok(()),
                Ok(code) => {
                    last = ProbeError::Status {
                        path: path.to_string(),
                        code,
                    }
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(UpgradeError::Probe {
            release: release.into(),
            path: path.to_string(),
            backend,
            secs,
            last,
        })
    }
}

/// One GET, its status code. Written on hyper's client connection rather than a client
/// library: it is one request to a loopback port, and hyper is already here for the proxy.
pub async fn probe(backend: SocketAddr, path: &str) -> Result<u16, ProbeError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(backend)
            .await
            .map_err(GetError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(GetError::Http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, backend.to_string())
            .header(hyper::header::USER_AGENT, "berth-upgrade")
            .body(Empty::<Bytes>::new())
            .map_err(GetError::Request)?;
        let resp = sender.send_request(req).await.map_err(GetError::Http)?;
        Ok(resp.status().as_u16())
    };
    let result = tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or(Err(GetError::Timeout));
    result.map_err(|source| ProbeError::Get {
        path: path.to_string(),
        backend,
        source,
    })
}
