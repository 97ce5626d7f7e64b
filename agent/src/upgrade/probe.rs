//! Is a color healthy? One look at its container (running, not unhealthy), and a GET on
//! `proxy.health_path` when one is configured: before the switch (the gate) and while the
//! new release is watched after it (verify).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bollard::models::HealthStatusEnum;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::colors::Side;
use super::{UpgradeError, Upgrader};

impl Upgrader<'_> {
    /// One look at a serving container: running, not unhealthy, and (with
    /// `proxy.health_path`) answering 2xx there.
    pub(super) async fn check(&self, id: &str, backend: Option<SocketAddr>) -> Result<(), String> {
        let info = self
            .engine
            .inspect_container(id)
            .await
            .map_err(|e| e.to_string())?;
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(format!(
                "container stopped (exit code {})",
                state.exit_code.unwrap_or(-1)
            ));
        }
        if let Some(h) = &state.health {
            if h.status == Some(HealthStatusEnum::UNHEALTHY) {
                let out = h
                    .log
                    .as_ref()
                    .and_then(|l| l.last())
                    .and_then(|l| l.output.clone())
                    .unwrap_or_default();
                return Err(format!("unhealthy: {}", out.trim()));
            }
        }
        if let (Some(path), Some(backend)) = (&self.config.proxy.health_path, backend) {
            let code = probe(backend, path).await?;
            if !(200..300).contains(&code) {
                return Err(format!("GET {path} answered {code}"));
            }
        }
        Ok(())
    }

    /// Before the switch: GET `proxy.health_path` must answer 2xx (when configured).
    pub(super) async fn gate(
        &self,
        release: &str,
        backend: SocketAddr,
    ) -> Result<(), UpgradeError> {
        let Some(path) = &self.config.proxy.health_path else {
            return Ok(());
        };
        let secs = self.config.timeouts.ready_secs;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::from("(no answer yet)");
        while Instant::now() < deadline {
            match probe(backend, path).await {
                Ok(code) if (200..300).contains(&code) => return Ok(()),
                Ok(code) => last = format!("{code}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(UpgradeError::Probe {
            release: release.into(),
            path: path.clone(),
            backend,
            secs,
            last,
        })
    }

    /// After the switch: the new side must stay healthy for `verify_secs`.
    pub(super) async fn verify(&self, side: &Side) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(self.config.upgrade.verify_secs);
        loop {
            for id in &side.ids {
                self.check(id, side.backend).await?;
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One GET, its status code. Written on hyper's client connection rather than a client
/// library: it is one request to a loopback port, and hyper is already here for the proxy.
pub async fn probe(backend: SocketAddr, path: &str) -> Result<u16, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connect {backend}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, backend.to_string())
            .header(hyper::header::USER_AGENT, "berth-upgrade")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} on {backend}: no answer within 2s")))
}
