//! The agent's side of the control socket: one typed function per request.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::protocol::{Drained, PreviewSet, Reply, Request, Routed, Status};
use super::ProxyError;
use crate::ipc::{self, IpcError};

/// Switches the proxy at `socket` to `backends` (the replicas of `release`); a refusal is an
/// error.
pub async fn route(
    socket: &Path,
    backends: &[SocketAddr],
    release: Option<&str>,
) -> Result<Routed, ProxyError> {
    let routed: Routed = ask(socket, &Request::route(backends, release)).await?;
    if !routed.ok {
        return Err(refused(socket, &routed));
    }
    Ok(routed)
}

/// Requests carrying `token` (preview header or cookie; until its Unix time) go to `backends`,
/// labelled `release`, until the next route, and so do `percent` of the sessions (a weighted
/// canary); no backends end the preview.
pub async fn preview(
    socket: &Path,
    backends: &[SocketAddr],
    release: Option<&str>,
    percent: u8,
    token: Option<(&str, u64)>,
) -> Result<PreviewSet, ProxyError> {
    let request = Request::Preview {
        backends: backends.to_vec(),
        release: release.map(str::to_string),
        percent,
        token: token.map(|(t, _)| t.to_string()),
        until: token.map(|(_, u)| u),
    };
    ask(socket, &request).await
}

/// The route and the per-backend counters.
pub async fn status(socket: &Path) -> Result<Status, ProxyError> {
    ask(socket, &Request::Status).await
}

/// Waits until nothing is in flight to `backend`, up to `timeout`. An incomplete drain is an
/// answer (`ok: false`, with what is left), not an error.
pub async fn drain(
    socket: &Path,
    backend: SocketAddr,
    timeout: Duration,
) -> Result<Drained, ProxyError> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let request = Request::Drain {
        backend,
        timeout_ms: Some(timeout_ms),
    };
    ask(socket, &request).await
}

/// Sends `request` and reads its answer as `T`; a refusal (a request the proxy did not
/// understand) is an error.
async fn ask<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T, ProxyError> {
    match call(socket, request).await? {
        Reply::Done(answer) => Ok(answer),
        Reply::Refused(r) => Err(refused(socket, &r)),
    }
}

async fn call<Req: serde::Serialize, Ans: DeserializeOwned>(
    socket: &Path,
    request: &Req,
) -> Result<Ans, ProxyError> {
    match ipc::call(socket, request).await {
        Ok(answer) => Ok(answer),
        Err(IpcError::Absent { path, source }) => Err(ProxyError::NotRunning { path, source }),
        Err(IpcError::Talk { path, source }) => Err(ProxyError::Control { path, source }),
        Err(IpcError::Answer {
            path,
            answer,
            source,
        }) => Err(ProxyError::Answer {
            path,
            answer,
            source: Some(source),
        }),
        Err(e) => Err(ProxyError::ControlSocket(e)),
    }
}

fn refused(socket: &Path, answer: &impl serde::Serialize) -> ProxyError {
    ProxyError::Answer {
        path: socket.to_path_buf(),
        answer: serde_json::to_string(answer).unwrap_or_default(),
        source: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ipc::Handler;
    use crate::protocol::{Answer, Refused};

    /// A proxy's control socket that refuses routes to port 1 and knows nothing in flight.
    #[derive(Debug)]
    struct Fake;

    impl Handler for Fake {
        type Request = Request;
        type Answer = Answer;
        async fn handle(&self, request: Request) -> Answer {
            match request {
                Request::Route { backends, .. } => Answer::Routed(Routed {
                    ok: backends.iter().all(|b| b.port() != 1),
                    active: backends,
                    previous: vec![],
                }),
                Request::Status | Request::Preview { .. } => Answer::Refused(Refused {
                    ok: false,
                    error: "no status here".into(),
                }),
                Request::Drain { backend, .. } => Answer::Drained(Drained {
                    ok: true,
                    backend,
                    inflight: 0,
                }),
            }
        }
        fn bad_request(&self, error: String) -> Answer {
            Answer::Refused(Refused { ok: false, error })
        }
    }

    #[tokio::test]
    async fn calls_and_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        assert!(matches!(
            status(&socket).await,
            Err(ProxyError::NotRunning { .. })
        ));
        let listener = ipc::bind(&socket).await.unwrap();
        let server = tokio::spawn(ipc::serve(listener, Arc::new(Fake)));

        assert_eq!(route(&socket, &[a], None).await.unwrap().active, vec![a]);
        let refusal = route(&socket, &["127.0.0.1:1".parse().unwrap()], None).await;
        assert!(
            matches!(&refusal, Err(ProxyError::Answer { path, .. }) if path == &socket),
            "{refusal:?}"
        );
        let refusal = status(&socket).await.unwrap_err().to_string();
        assert!(refusal.contains("no status here"), "{refusal}");
        let drained = drain(&socket, a, Duration::from_secs(1)).await.unwrap();
        assert!(drained.ok);

        server.abort();
    }
}
