//! The resident agent's control socket. `berth upgrade`, `berth rollback` and `berth status`
//! (what an SSM Run Command runs on the instance) are its clients: one JSON request per
//! connection, one JSON answer. The socket is 0600, because whoever can upgrade can take the
//! service down. With no agent listening, the commands act in-process instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Deployer;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: another agent is listening here")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Talk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: bad answer: {message}")]
    Answer { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Upgrade { release: Option<String> },
    Rollback,
    Status,
}

/// What the agent answers; `code` is the exit code the client exits with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// Binds the socket (0600) and answers requests in the background.
pub async fn serve(path: &Path, deployer: Arc<Deployer>) -> Result<(), DaemonError> {
    let bind_err = |source| DaemonError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        // A live agent answers; a socket left by a killed one does not, and is replaced.
        if UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    tracing::info!(path = %path.display(), "control socket listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let deployer = deployer.clone();
            // Its own task: a client that goes away (an SSM timeout) does not cancel an upgrade
            // half-way.
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => deployer.handle(req).await,
                    Err(e) => Answer {
                        ok: false,
                        result: None,
                        error: Some(format!("bad request: {e}")),
                        code: Some(2),
                    },
                };
                let mut out = serde_json::to_string(&answer).unwrap_or_default();
                out.push('\n');
                let _ = write.write_all(out.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Sends a request to the agent. `Ok(None)`: no agent listens there (act in-process).
pub async fn request(path: &Path, req: &Request) -> Result<Option<Answer>, DaemonError> {
    let talk = |source| DaemonError::Talk {
        path: path.to_path_buf(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(talk(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req).unwrap_or_default();
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(talk)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(talk)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| DaemonError::Answer {
            path: path.to_path_buf(),
            message: format!("{e}: {answer:?}"),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_an_op() {
        let r: Request = serde_json::from_str(r#"{"op":"upgrade","release":"v2"}"#).unwrap();
        assert!(matches!(r, Request::Upgrade { release: Some(ref v) } if v == "v2"));
        let r: Request = serde_json::from_str(r#"{"op":"upgrade"}"#).unwrap();
        assert!(matches!(r, Request::Upgrade { release: None }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[tokio::test]
    async fn no_agent_or_a_stale_socket_means_acting_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(request(&path, &Request::Status).await.unwrap().is_none());
        // A socket file nobody listens on, as a SIGKILLed agent leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(request(&path, &Request::Status).await.unwrap().is_none());
    }
}
