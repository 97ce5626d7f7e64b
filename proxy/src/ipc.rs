//! JSON lines over a 0600 Unix socket: the plumbing under the agent's control socket and
//! `berth proxy`'s. A client writes one request per line and reads one answer per line; the
//! server answers each line in its own task. The socket is 0600 because whoever can talk to it
//! can change what serves. Hand-written because it is forty lines over tokio and serde, and
//! an RPC crate would bring more than it saves.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("socket {path}: cannot listen")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket {path}: another process is listening here")]
    InUse { path: PathBuf },
    /// No socket file, or one a killed process left: nobody to ask.
    #[error("socket {path}: nobody listens")]
    Absent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket {path}")]
    Talk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket {path}: bad answer {answer:?}")]
    Answer {
        path: PathBuf,
        answer: String,
        source: serde_json::Error,
    },
}

/// What answers a socket's requests.
pub trait Handler: Send + Sync + 'static {
    type Request: DeserializeOwned + Send;
    type Answer: Serialize + Send;
    /// Close the connection after one answer (the agent's socket always has), rather than
    /// reading further requests from it.
    const ONE_REQUEST: bool = false;
    fn handle(&self, request: Self::Request) -> impl Future<Output = Self::Answer> + Send;
    /// The answer to a line that is not a request (`error` says why).
    fn bad_request(&self, error: String) -> Self::Answer;
    /// An answer has been written to its client (or could not be): a process about to end
    /// after a request waits for this, so that the client gets its answer.
    fn answered(&self) {}
}

/// Binds `path` (mode 0600, its directory created). A socket file left by a killed process is
/// replaced; one that a live process answers on is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, IpcError> {
    let bind_err = |source| IpcError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(IpcError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Bound under a name of its own and made 0600 before it takes its real name: bound at
    // `path` directly, it would accept connections with the umask's mode for a moment.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(bind_err)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(bind_err(e));
    }
    Ok(listener)
}

/// Answers requests until the task is dropped. Each connection runs in its own task, so a
/// client that goes away (an SSM timeout) does not cancel the work it asked for.
pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: back off rather than spin.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                // After a line too long, the rest of it is unread: answer, then close.
                let (answer, too_long) = match read_line(&mut reader, MAX_LINE).await {
                    Ok(Line::Full(line)) => match serde_json::from_slice::<H::Request>(&line) {
                        Ok(request) => (handler.handle(request).await, false),
                        Err(e) => (handler.bad_request(e.to_string()), false),
                    },
                    Ok(Line::TooLong) => (
                        handler.bad_request(format!(
                            "request line over {} KiB: refused",
                            MAX_LINE / 1024
                        )),
                        true,
                    ),
                    Ok(Line::End) | Err(_) => break,
                };
                let Ok(mut out) = serde_json::to_string(&answer) else {
                    break;
                };
                out.push('\n');
                let written = write.write_all(out.as_bytes()).await;
                handler.answered();
                if written.is_err() || H::ONE_REQUEST || too_long {
                    break;
                }
            }
        });
    }
}

/// The longest request line a socket reads; a longer one is refused, and its connection
/// closed, rather than buffered without end.
pub const MAX_LINE: usize = 64 * 1024;

/// The longest answer a client reads (a proxy's status with many backends stays far below).
const MAX_ANSWER: usize = 16 << 20;

enum Line {
    Full(Vec<u8>),
    TooLong,
    End,
}

/// One line (without its newline), reading at most `cap` bytes of it.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let limit = u64::try_from(cap + 1).unwrap_or(u64::MAX);
    let n = (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Full(line));
    }
    if line.len() > cap {
        return Ok(Line::TooLong);
    }
    // The last line, without a newline.
    Ok(Line::Full(line))
}

/// Sends one request and reads its answer. [`IpcError::Absent`]: nobody listens at `path`.
pub async fn call<Req: Serialize, Ans: DeserializeOwned>(
    path: &Path,
    request: &Req,
) -> Result<Ans, IpcError> {
    let talk = |source| IpcError::Talk {
        path: path.to_path_buf(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(source)
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(IpcError::Absent {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(e) => return Err(talk(e)),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request)
        .map_err(std::io::Error::other)
        .map_err(talk)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(talk)?;
    let answer = match read_line(&mut BufReader::new(read), MAX_ANSWER)
        .await
        .map_err(talk)?
    {
        Line::Full(bytes) => bytes,
        Line::End => Vec::new(),
        Line::TooLong => {
            return Err(talk(std::io::Error::other(format!(
                "answer over {} MiB",
                MAX_ANSWER >> 20
            ))))
        }
    };
    serde_json::from_slice(&answer).map_err(|source| IpcError::Answer {
        path: path.to_path_buf(),
        answer: String::from_utf8_lossy(&answer).trim_end().to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Echo;

    impl Handler for Echo {
        type Request = u32;
        type Answer = Result<u32, String>;
        async fn handle(&self, request: u32) -> Result<u32, String> {
            Ok(request + 1)
        }
        fn bad_request(&self, error: String) -> Result<u32, String> {
            Err(error)
        }
    }

    #[tokio::test]
    async fn answers_and_refuses_a_second_listener_and_nobody_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("c.sock");
        assert!(matches!(
            call::<u32, Result<u32, String>>(&path, &1).await,
            Err(IpcError::Absent { .. })
        ));
        let listener = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        let answer: Result<u32, String> = call(&path, &41).await.unwrap();
        assert_eq!(answer, Ok(42));
        let bad: Result<u32, String> = call(&path, &"x").await.unwrap();
        assert!(bad.is_err(), "{bad:?}");
        assert!(matches!(bind(&path).await, Err(IpcError::InUse { .. })));
        server.abort();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        // A socket file nobody listens on, as a SIGKILLed process leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(matches!(
            call::<u32, u32>(&path, &1).await,
            Err(IpcError::Absent { .. })
        ));
        bind(&path).await.unwrap();
    }
}
