//! The health endpoint the load balancer's target group checks, `/status` for people and
//! `/metrics` for Prometheus. `GET <path>` answers 503 with the phase as JSON until every
//! service is up and healthy, then 200; it also counts the ALB checker's consecutive answers
//! (User-Agent `ELB-HealthChecker/2.0`), which is how berth knows what the ALB sees when no
//! target group ARN is configured. `GET /status`: release, services, timings, last error, and
//! with the proxy strategy the proxy's traffic per release. `GET /metrics`: see [`metrics`].
//! Those two answer this host only (loopback): they name the instance, its objects and
//! versions, secret names and the last error, which are nobody else's business; the health
//! path answers anyone. Every connection is bounded: its request head must arrive within
//! [`HEADER_TIMEOUT`], it lives at most [`CONNECTION_LIFETIME`], and [`super::admit`] caps
//! how many one source and all sources may hold.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use super::admit::{self, Admission};
use super::metrics;
use super::state::{AgentState, Phase, Status};
use super::traffic::{Traffic, ASK_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} (health.listen)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the listening socket systemd passes (berth.socket)")]
    Passed { source: std::io::Error },
}

/// The health endpoint's listening socket: the one systemd passes (`berth.socket`, which holds
/// it while the agent restarts, so that the load balancer's checker never finds the port
/// closed), else a new one on `listen`. A passed socket on another address is let go with a
/// warning: `health.listen` is what the load balancer checks, and an agent that refused to
/// start would take the instance down for a setting that only shortens restarts.
async fn listener(listen: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    let passed = |source| HttpError::Passed { source };
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(std_listener) = fds.take_tcp_listener(0).map_err(passed)? {
        let at = std_listener.local_addr().map_err(passed)?;
        if at == listen {
            std_listener.set_nonblocking(true).map_err(passed)?;
            return tokio::net::TcpListener::from_std(std_listener).map_err(passed);
        }
        tracing::warn!(passed = %at, %listen, "berth.socket listens elsewhere than health.listen: listening on health.listen (make them the same: systemctl edit berth.socket)");
        drop(std_listener);
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: listen,
            source,
        })
}

/// A request head (or the next one on a kept-alive connection) must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is asked to close (after the answer in flight) once it is this old.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// What the endpoint is built with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub listen: SocketAddr,
    /// The path the load balancer checks.
    pub health_path: String,
    /// `berth proxy`'s control socket (proxy strategy): `/metrics` and `/status` ask it.
    pub proxy: Option<PathBuf>,
}

/// What the health path answers.
#[derive(Debug, Serialize)]
struct HealthBody<'a> {
    phase: Phase,
    release: Option<&'a str>,
    /// Why it is not 200 while holding: what the watchdog found.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    faults: &'a [String],
}

/// What `/status` answers: the agent's state, and the proxy's traffic when there is a proxy.
#[derive(Debug, Serialize)]
struct StatusBody {
    #[serde(flatten)]
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    traffic: Option<Traffic>,
}

/// One answer, before it becomes a response.
#[derive(Debug)]
struct Reply {
    code: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(code: StatusCode, body: String) -> Reply {
        Reply {
            code,
            content_type: "application/json",
            body,
        }
    }
}

/// `peer`: the request's source address; `checker`: whether it is the load balancer's
/// health checker (by its User-Agent).
async fn answer(
    endpoint: &Endpoint,
    state: &AgentState,
    path: &str,
    peer: IpAddr,
    checker: bool,
) -> Reply {
    if (path == "/status" || path == "/metrics") && !admit::is_local(peer) {
        return Reply::json(
            StatusCode::FORBIDDEN,
            "{\"error\":\"/status and /metrics answer on this host only (loopback)\"}".into(),
        );
    }
    let status = state.snapshot();
    match path {
        p if p == endpoint.health_path => {
            let ready = status.serves();
            if checker {
                state.record_lb_check(peer, ready);
            }
            let body = HealthBody {
                phase: status.phase,
                release: status.release.as_deref(),
                faults: &status.faults,
            };
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Reply::json(code, serde_json::to_string(&body).unwrap_or_default())
        }
        "/status" => {
            let traffic = match &endpoint.proxy {
                Some(socket) => Some(Traffic::of(socket).await),
                None => None,
            };
            let body = StatusBody { status, traffic };
            Reply::json(
                StatusCode::OK,
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        "/metrics" => Reply {
            code: StatusCode::OK,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(&status, endpoint.proxy.as_deref(), ASK_TIMEOUT).await,
        },
        _ => Reply::json(
            StatusCode::NOT_FOUND,
            "{\"error\":\"not found\"}".to_string(),
        ),
    }
}

/// Binds the endpoint now (so a taken port fails the boot at once), serves in the background.
pub async fn serve(endpoint: Endpoint, state: AgentState) -> Result<SocketAddr, HttpError> {
    let addr = endpoint.listen;
    let listener = listener(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(%local, path = %endpoint.health_path, "health endpoint listening");
    let endpoint = Arc::new(endpoint);
    let admission = Admission::new(admit::PER_PEER, admit::TOTAL);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: back off rather than spin.
                    tracing::warn!(error = %e, "health endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(ticket) = admission.admit(peer.ip()) else {
                // Over its share: closed at once, so that it holds no slot and no descriptor.
                tracing::debug!(%peer, "health endpoint: too many connections from this source; closed");
                drop(stream);
                continue;
            };
            let state = state.clone();
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let _ticket = ticket;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    let endpoint = endpoint.clone();
                    async move {
                        let checker = req
                            .headers()
                            .get(hyper::header::USER_AGENT)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|ua| ua.starts_with("ELB-HealthChecker/"));
                        let path = req.uri().path();
                        let reply = answer(&endpoint, &state, path, peer.ip(), checker).await;
                        let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                        *resp.status_mut() = reply.code;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(reply.content_type),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                }
                // Old enough: finish the answer in flight, then close; a client that stops
                // reading it gets no longer than the head's timeout more.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::ipc::{self, Handler};
    use crate::proxy::protocol::{Answer, BackendStats, Refused, Request as ProxyRequest};

    /// A proxy's control socket that routes to two replicas of release 2, or never answers.
    #[derive(Debug)]
    struct FakeProxy {
        hangs: bool,
    }

    impl Handler for FakeProxy {
        type Request = ProxyRequest;
        type Answer = Answer;
        async fn handle(&self, request: ProxyRequest) -> Answer {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            let (a, b): (SocketAddr, SocketAddr) = (
                "127.0.0.1:2001".parse().unwrap(),
                "127.0.0.1:2002".parse().unwrap(),
            );
            match request {
                ProxyRequest::Status => {
                    let stats = BackendStats {
                        release: Some("2".into()),
                        served: 10,
                        responses: [0, 9, 0, 0, 1],
                        latency: vec![10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        ..BackendStats::default()
                    };
                    Answer::Status(crate::proxy::protocol::Status {
                        ok: true,
                        active: vec![a, b],
                        previous: vec![],
                        backends: BTreeMap::from([(a, stats.clone()), (b, stats)]),
                        preview: None,
                        pid: None,
                        faults: Default::default(),
                    })
                }
                _ => self.bad_request("not here".into()),
            }
        }
        fn bad_request(&self, error: String) -> Answer {
            Answer::Refused(Refused { ok: false, error })
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn status_and_metrics_answer_this_host_only_and_health_anyone() {
        let (e, state) = (endpoint(None), ready_state());
        let bridge = IpAddr::from([172, 17, 0, 2]);
        for path in ["/status", "/metrics"] {
            let r = answer(&e, &state, path, bridge, false).await;
            assert_eq!(r.code, StatusCode::FORBIDDEN, "{path}");
            assert!(!r.body.contains("shop"), "{}", r.body);
            let r = answer(&e, &state, path, "::1".parse().unwrap(), false).await;
            assert_eq!(r.code, StatusCode::OK, "{path}");
        }
        let r = answer(&e, &state, "/healthz", bridge, false).await;
        assert_eq!(r.code, StatusCode::OK);
    }

    fn endpoint(proxy: Option<PathBuf>) -> Endpoint {
        Endpoint {
            listen: "127.0.0.1:0".parse().unwrap(),
            health_path: "/healthz".into(),
            proxy,
        }
    }

    fn ready_state() -> AgentState {
        let state = AgentState::new("shop", Instant::now());
        state.update(|s| s.release = Some("2".into()));
        state.set_phase(Phase::Ready);
        state
    }

    /// A fake proxy listening at `<dir>/proxy.sock`.
    async fn fake_proxy(dir: &tempfile::TempDir, hangs: bool) -> PathBuf {
        let socket = dir.path().join("proxy.sock");
        let listener = ipc::bind(&socket).await.unwrap();
        tokio::spawn(ipc::serve(listener, Arc::new(FakeProxy { hangs })));
        socket
    }

    #[tokio::test]
    async fn health_is_503_until_ready_and_counts_the_load_balancers_checks() {
        let state = AgentState::new("shop", Instant::now());
        let e = endpoint(None);
        let r = answer(&e, &state, "/healthz", IpAddr::from([10, 0, 0, 1]), true).await;
        assert_eq!(r.code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body.contains("\"identity\""), "{}", r.body);
        state.set_phase(Phase::Ready);
        let r = answer(&e, &state, "/healthz", IpAddr::from([10, 0, 0, 1]), true).await;
        assert_eq!(r.code, StatusCode::OK);
        tokio::time::timeout(Duration::from_secs(1), state.lb_streak_reaches(1))
            .await
            .unwrap();
        let r = answer(&e, &state, "/nope", LOCAL, false).await;
        assert_eq!(r.code, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn metrics_without_a_proxy_are_the_agents_own() {
        let r = answer(&endpoint(None), &ready_state(), "/metrics", LOCAL, false).await;
        assert_eq!(r.code, StatusCode::OK);
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        assert!(r.body.contains("berth_agent_ready 1\n"), "{}", r.body);
        assert!(!r.body.contains("berth_proxy"), "{}", r.body);
    }

    #[tokio::test]
    async fn metrics_with_a_proxy_carry_its_series_per_backend() {
        let dir = tempfile::tempdir().unwrap();
        let socket = fake_proxy(&dir, false).await;
        let r = answer(
            &endpoint(Some(socket)),
            &ready_state(),
            "/metrics",
            LOCAL,
            false,
        )
        .await;
        assert_eq!(r.code, StatusCode::OK);
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        let text = &r.body;
        assert!(text.contains("berth_agent_ready 1\n"), "{text}");
        assert!(text.contains("berth_proxy_up 1\n"), "{text}");
        for backend in ["127.0.0.1:2001", "127.0.0.1:2002"] {
            let line = format!(
                "berth_proxy_responses_total{{backend=\"{backend}\",release=\"2\",code=\"5xx\"}} 1"
            );
            assert!(text.contains(&line), "{text}");
        }
    }

    #[tokio::test]
    async fn metrics_with_a_proxy_that_cannot_be_asked_say_so_and_keep_the_agents_part() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("nobody.sock");
        let r = answer(
            &endpoint(Some(absent)),
            &ready_state(),
            "/metrics",
            LOCAL,
            false,
        )
        .await;
        assert_eq!(r.code, StatusCode::OK);
        assert!(r.body.contains("berth_proxy_up 0\n"), "{}", r.body);
        assert!(r.body.contains("berth_agent_ready 1\n"), "{}", r.body);

        // A proxy that never answers costs the scrape the timeout, no more.
        let socket = fake_proxy(&dir, true).await;
        let started = Instant::now();
        let text = metrics::render(
            &ready_state().snapshot(),
            Some(&socket),
            Duration::from_millis(200),
        )
        .await;
        assert!(text.contains("berth_proxy_up 0\n"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn status_shows_the_traffic_per_release_or_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let socket = fake_proxy(&dir, false).await;
        let r = answer(
            &endpoint(Some(socket)),
            &ready_state(),
            "/status",
            LOCAL,
            false,
        )
        .await;
        assert_eq!(r.code, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["release"], "2", "{body}");
        let release = &body["traffic"][0];
        assert_eq!(release["release"], "2", "{body}");
        assert_eq!(release["active"], true, "{body}");
        assert_eq!(release["requests"], 20, "{body}");
        assert_eq!(release["errors_5xx"], 2, "{body}");
        assert_eq!(release["backends"].as_array().unwrap().len(), 2, "{body}");
        assert_eq!(release["p99_ms"], 1, "{body}");

        let absent = dir.path().join("nobody.sock");
        let r = answer(
            &endpoint(Some(absent)),
            &ready_state(),
            "/status",
            LOCAL,
            false,
        )
        .await;
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(
            body["traffic"]["error"].as_str().unwrap().contains("proxy"),
            "{body}"
        );
        let r = answer(&endpoint(None), &ready_state(), "/status", LOCAL, false).await;
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(body.get("traffic").is_none(), "{body}");
        assert!(r.body.contains("\"in_service\": false"), "{}", r.body);
    }
}
