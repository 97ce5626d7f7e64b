//! The resident agent's control socket. `berth upgrade`, `rollback`, `status` and `leave`
//! (what an SSM Run Command runs on the instance) are its clients: one JSON request, one JSON
//! answer, over [`crate::ipc`] (0600: whoever can upgrade can take the service down). With no
//! agent listening, the commands act in-process instead.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::deployer::{AgentStatus, Deployer};
use super::leave::Left;
use crate::exit::{Coded, Exit};
use crate::ipc::{self, Handler, IpcError};
use crate::serve::{AgentState, Phase};
use crate::upgrade::Deployed;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Upgrade {
        release: Option<String>,
        /// Stop before the switch: the new release in preview.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        preview: bool,
        /// Through a weighted canary before the switch: these shares of sessions (percent);
        /// empty: `upgrade.canary.steps`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<Vec<u8>>,
        /// Go on when the release it would go back to is no longer complete.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_no_rollback: bool,
        /// With `preview`: when it ends (Unix seconds), as the token says; a rollout gives
        /// every instance the same one, so that they derive one token. Default: now and
        /// `upgrade.preview_secs`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview_until: Option<u64>,
    },
    /// The release in preview takes the traffic.
    Promote,
    Rollback {
        /// Across a contract migration too (the previous release may not read the database).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    Status,
    /// Drain this instance and stop its stack, as a scale-in does; answered once done.
    Leave,
}

/// What a request produced.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Deployed(Box<Deployed>),
    Status(Box<AgentStatus>),
    Left(Left),
}

/// Where a leave's outcome goes: the `berth leave` client waiting on the socket.
pub type Asker = oneshot::Sender<Answer<Reply>>;

/// `berth leave` requests, for the holding agent to act on.
#[derive(Debug)]
pub struct LeaveRequests(mpsc::Receiver<Asker>);

impl LeaveRequests {
    /// The next request; pending for ever once the socket is gone.
    pub async fn next(&mut self) -> Option<Asker> {
        match self.0.recv().await {
            Some(asker) => Some(asker),
            None => std::future::pending().await,
        }
    }
}

/// The agent's answer. `R` is [`Reply`] where the agent writes it; the client, which only
/// prints it, reads it as plain JSON. `code` is the exit code the client exits with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer<R> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl<R> Answer<R> {
    pub fn ok(result: R) -> Answer<R> {
        Answer {
            ok: true,
            result: Some(result),
            error: None,
            code: None,
        }
    }

    pub fn failed(error: String, code: Exit) -> Answer<R> {
        Answer {
            ok: false,
            result: None,
            error: Some(error),
            code: Some(code as u8),
        }
    }
}

/// The control socket's handler for the agent's whole life. Bound at the start of the boot,
/// it answers "busy" (exit 7) until the boot hands it the deployer: an SSM `berth upgrade` sent
/// to a booting instance must not find the socket absent and run in-process beside the boot.
#[derive(Debug)]
pub struct Gate {
    state: AgentState,
    deployer: std::sync::OnceLock<Arc<Deployer>>,
    leave: mpsc::Sender<Asker>,
    /// A `berth leave` was asked; its answer written, [`Gate::leave_answered`] returns.
    leave_asked: std::sync::atomic::AtomicBool,
    leave_written: tokio::sync::Notify,
    /// The instance has left: only `status` is answered.
    closed: std::sync::atomic::AtomicBool,
}

impl Gate {
    /// From now on, requests go to `deployer`.
    pub fn open(&self, deployer: Arc<Deployer>) {
        let _ = self.deployer.set(deployer);
    }

    /// The instance has left: from now on only `status` is answered.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Once the answer to `berth leave` has been written (at most `limit`, in case its client
    /// went away): the agent exits after leaving, and the client must get its answer first.
    pub async fn leave_answered(&self, limit: std::time::Duration) {
        use std::sync::atomic::Ordering;
        if self.leave_asked.load(Ordering::SeqCst) {
            let _ = tokio::time::timeout(limit, self.leave_written.notified()).await;
        }
    }
}

impl Handler for Gate {
    type Request = Request;
    type Answer = Answer<Reply>;
    const ONE_REQUEST: bool = true;

    async fn handle(&self, request: Request) -> Answer<Reply> {
        let Some(deployer) = self.deployer.get() else {
            let phase = self.state.snapshot().phase;
            let doing = match phase {
                Phase::Ready => "waiting for the load balancer to mark it in service",
                other => other.as_str(),
            };
            return Answer::failed(
                format!("the agent is booting ({doing}); ask again once it holds"),
                Exit::Busy,
            );
        };
        let closed = self.closed.load(std::sync::atomic::Ordering::SeqCst);
        if closed && !matches!(request, Request::Status) {
            return Answer::failed(
                "this instance has left (its services are stopped): systemctl restart berth boots it again"
                    .into(),
                Exit::Busy,
            );
        }
        if let Request::Leave = request {
            self.leave_asked
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let (asker, answer) = oneshot::channel();
            if self.leave.send(asker).await.is_err() {
                return Answer::failed("the agent is stopping".into(), Exit::Busy);
            }
            return answer.await.unwrap_or_else(|_| {
                Answer::failed("the agent stopped before it had left".into(), Exit::Failed)
            });
        }
        let acts = !matches!(request, Request::Status);
        if acts {
            super::hold::expect_code();
        }
        let answer = match deployer.handle_request(request).await {
            Ok(reply) => Answer::ok(reply),
            Err(e) => {
                let message = crate::report::chain(&e);
                tracing::error!(error = %message, "control request failed");
                Answer::failed(message, e.exit())
            }
        };
        if acts {
            // An upgrade or rollback ran code holding does not: hand it back, as after the boot.
            super::hold::release_code();
        }
        answer
    }

    fn bad_request(&self, error: String) -> Answer<Reply> {
        Answer::failed(format!("bad request: {error}"), Exit::Usage)
    }

    fn answered(&self) {
        if self.leave_asked.load(std::sync::atomic::Ordering::SeqCst) {
            // A permit: it counts even when nobody waits yet.
            self.leave_written.notify_one();
        }
    }
}

/// Binds the control socket and answers it in the background: busy until [`Gate::open`].
/// `berth leave` requests come out of the second half.
pub async fn listen(
    path: &Path,
    state: AgentState,
) -> Result<(Arc<Gate>, LeaveRequests), IpcError> {
    let listener = ipc::bind(path).await?;
    tracing::info!(path = %path.display(), "control socket listening");
    let (leave, asked) = mpsc::channel(4);
    let gate = Arc::new(Gate {
        state,
        deployer: std::sync::OnceLock::new(),
        leave,
        leave_asked: std::sync::atomic::AtomicBool::new(false),
        leave_written: tokio::sync::Notify::new(),
        closed: std::sync::atomic::AtomicBool::new(false),
    });
    tokio::spawn(ipc::serve(listener, gate.clone()));
    Ok((gate, LeaveRequests(asked)))
}

/// Sends a request to the agent. `Ok(None)`: no agent listens there (act in-process).
pub async fn request(
    path: &Path,
    request: &Request,
) -> Result<Option<Answer<serde_json::Value>>, IpcError> {
    match ipc::call(path, request).await {
        Ok(answer) => Ok(Some(answer)),
        Err(IpcError::Absent { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_an_op() {
        let r: Request = serde_json::from_str(r#"{"op":"upgrade","release":"v2"}"#).unwrap();
        assert!(
            matches!(r, Request::Upgrade { release: Some(ref v), preview: false, canary: None, allow_no_rollback: false, preview_until: None } if v == "v2")
        );
        let r: Request = serde_json::from_str(r#"{"op":"upgrade"}"#).unwrap();
        assert!(matches!(
            r,
            Request::Upgrade {
                release: None,
                preview: false,
                canary: None,
                allow_no_rollback: false,
                preview_until: None,
            }
        ));
        let r: Request =
            serde_json::from_str(r#"{"op":"upgrade","allow_no_rollback":true}"#).unwrap();
        assert!(matches!(
            r,
            Request::Upgrade {
                allow_no_rollback: true,
                ..
            }
        ));
        let r: Request = serde_json::from_str(r#"{"op":"upgrade","canary":[5,50]}"#).unwrap();
        assert!(matches!(r, Request::Upgrade { canary: Some(ref s), .. } if s == &[5, 50]));
        let r: Request = serde_json::from_str(r#"{"op":"upgrade","preview":true}"#).unwrap();
        assert!(matches!(r, Request::Upgrade { preview: true, .. }));
        let r: Request = serde_json::from_str(r#"{"op":"promote"}"#).unwrap();
        assert!(matches!(r, Request::Promote));
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn a_failed_answer_carries_the_message_and_the_exit_code() {
        let a: Answer<Reply> = Answer::failed("another upgrade is running".into(), Exit::Busy);
        let text = serde_json::to_string(&a).unwrap();
        let back: Answer<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert!(!back.ok);
        assert_eq!(back.code, Some(7));
        assert_eq!(back.error.as_deref(), Some("another upgrade is running"));
        assert!(back.result.is_none());
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
