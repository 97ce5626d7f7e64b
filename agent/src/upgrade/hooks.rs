//! Hooks at named stages of an upgrade (`[upgrade.hooks.<stage>]`, proxy strategy): the team's
//! own check between "the new release is healthy" and "it takes traffic" (`after_healthy`,
//! CodeDeploy's ValidateService), after the switch, after a rollback.
//!
//! A command runs with `BERTH_HOOK` (the stage), `BERTH_RELEASE`, `BERTH_PREVIOUS_RELEASE`,
//! `BERTH_PROJECT` and `BERTH_BACKENDS` (the new release's replicas, `host:port` comma
//! separated: before the switch nothing else reaches them). Exit 0 passes, 75 (EX_TEMPFAIL)
//! is "not yet" (asked again after `retry_secs`, within `timeout_secs`), anything else fails.
//! A URL is POSTed the same as JSON: 2xx passes, 503 is "not yet". Output goes to
//! `<run_dir>/hooks/<stage>.log` (0600), never into an error, the log or `/status`: a hook
//! may print what it checked with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::config::{HookCommand, HookSettings};

/// A command's "not yet" (sysexits' EX_TEMPFAIL).
pub const NOT_YET_EXIT: i32 = 75;
/// A URL's "not yet".
pub const NOT_YET_STATUS: u16 = 503;

/// What a hook is told.
#[derive(Debug, Clone, Serialize)]
pub struct Context<'a> {
    pub stage: &'static str,
    pub release: &'a str,
    pub previous: Option<&'a str>,
    pub project: &'a str,
    pub backends: &'a [SocketAddr],
}

/// Why a hook failed: the stage, what it is (a command, or the URL's address), and how; its
/// output is in `log`.
#[derive(Debug, thiserror::Error)]
#[error("hook {stage} ({what}) {how}; its output: {}", log.display())]
pub struct HookFailed {
    pub stage: &'static str,
    pub what: String,
    pub how: String,
    pub log: PathBuf,
}

/// One answer.
enum Answer {
    Pass,
    NotYet,
    Fail(String),
}

/// Runs `hook` for `ctx` until it passes, fails, or its time runs out; how long it took.
pub async fn run(
    hook: &HookSettings,
    ctx: &Context<'_>,
    run_dir: &Path,
) -> Result<Duration, HookFailed> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(hook.timeout_secs);
    let log = run_dir.join("hooks").join(format!("{}.log", ctx.stage));
    let what = match (&hook.command, &hook.url) {
        (Some(_), _) => "command".to_string(),
        (None, Some(url)) => url_address(url).unwrap_or_else(|| "url".into()),
        (None, None) => "nothing".into(),
    };
    let failed = |how: String| HookFailed {
        stage: ctx.stage,
        what: what.clone(),
        how,
        log: log.clone(),
    };
    let mut out = open_log(&log).map_err(|e| failed(format!("cannot write its log: {e}")))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        write_line(
            &mut out,
            &format!(
                "--- {} attempt {attempt}, release {}",
                ctx.stage, ctx.release
            ),
        );
        let answer = match (&hook.command, &hook.url) {
            (Some(command), _) => run_command(command, ctx, &mut out, left).await,
            (None, Some(url)) => post(url, ctx, &mut out, left).await,
            (None, None) => Answer::Fail("has neither command nor url".into()),
        };
        match answer {
            Answer::Pass => {
                tracing::info!(
                    hook = ctx.stage,
                    release = ctx.release,
                    attempts = attempt,
                    secs = started.elapsed().as_secs_f64(),
                    "hook passed"
                );
                return Ok(started.elapsed());
            }
            Answer::Fail(how) => return Err(failed(how)),
            Answer::NotYet => {}
        }
        let retry = Duration::from_secs(hook.retry_secs);
        if Instant::now() + retry >= deadline {
            return Err(failed(format!(
                "still answered \"not yet\" after {attempt} attempts in {}s",
                hook.timeout_secs
            )));
        }
        tracing::info!(
            hook = ctx.stage,
            attempt,
            "hook answered \"not yet\": asked again"
        );
        tokio::time::sleep(retry).await;
    }
}

async fn run_command(
    command: &HookCommand,
    ctx: &Context<'_>,
    out: &mut std::fs::File,
    left: Duration,
) -> Answer {
    let mut cmd = match command {
        HookCommand::Shell(line) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
        HookCommand::Argv(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let backends: Vec<String> = ctx.backends.iter().map(ToString::to_string).collect();
    cmd.env("BERTH_HOOK", ctx.stage)
        .env("BERTH_RELEASE", ctx.release)
        .env("BERTH_PREVIOUS_RELEASE", ctx.previous.unwrap_or(""))
        .env("BERTH_PROJECT", ctx.project)
        .env("BERTH_BACKENDS", backends.join(","))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let (Ok(stdout), Ok(stderr)) = (out.try_clone(), out.try_clone()) else {
        return Answer::Fail("cannot hand it its log".into());
    };
    cmd.stdout(stdout).stderr(stderr);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Answer::Fail(format!("could not start: {e}")),
    };
    match tokio::time::timeout(left, child.wait()).await {
        Err(_) => {
            // Dropped: killed (kill_on_drop); reaped by tokio.
            Answer::Fail(format!(
                "did not finish within its timeout ({}s left)",
                left.as_secs()
            ))
        }
        Ok(Err(e)) => Answer::Fail(format!("could not be waited for: {e}")),
        Ok(Ok(status)) => match status.code() {
            Some(0) => Answer::Pass,
            Some(NOT_YET_EXIT) => Answer::NotYet,
            Some(code) => Answer::Fail(format!("exited with code {code}")),
            None => Answer::Fail(format!("was ended by a signal ({status})")),
        },
    }
}

/// `host:port` of an `http://` URL (what errors name: a URL's path or query may hold a key).
fn url_address(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    Some(format!("{}:{}", uri.host()?, uri.port_u16().unwrap_or(80)))
}

/// One POST of `ctx` as JSON. Written on hyper's client connection, as the probe is: one
/// request to one address, and hyper is already here.
async fn post(url: &str, ctx: &Context<'_>, out: &mut std::fs::File, left: Duration) -> Answer {
    let attempt = async {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
        let address = url_address(url).ok_or("the url has no host")?;
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(ctx).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, address.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(left, attempt).await {
        Err(_) => Answer::Fail("did not answer within its timeout".into()),
        Ok(Err(e)) => Answer::Fail(e),
        Ok(Ok((status, body))) => {
            use std::io::Write;
            let _ = out.write_all(&body[..body.len().min(64 * 1024)]);
            write_line(out, "");
            match status {
                200..=299 => Answer::Pass,
                NOT_YET_STATUS => Answer::NotYet,
                other => Answer::Fail(format!("answered {other}")),
            }
        }
    }
}

/// The stage's log, emptied, 0600 (its directory 0700).
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn write_line(out: &mut std::fs::File, line: &str) {
    use std::io::Write;
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hook(command: &str, timeout_secs: u64) -> HookSettings {
        HookSettings {
            command: Some(HookCommand::Shell(command.into())),
            url: None,
            timeout_secs,
            retry_secs: 1,
        }
    }

    fn ctx(backends: &[SocketAddr]) -> Context<'_> {
        Context {
            stage: "after_healthy",
            release: "7",
            previous: Some("6"),
            project: "shop",
            backends,
        }
    }

    #[tokio::test]
    async fn a_hook_sees_the_new_backends_and_its_output_stays_in_its_0600_log() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:5000".parse().unwrap()];
        let h = hook(
            "echo \"secret=hunter2 $BERTH_HOOK $BERTH_RELEASE $BERTH_PREVIOUS_RELEASE $BERTH_BACKENDS\"",
            10,
        );
        run(&h, &ctx(&backends), dir.path()).await.unwrap();
        let log = dir.path().join("hooks/after_healthy.log");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("secret=hunter2 after_healthy 7 6 127.0.0.1:5000"),
            "{text}"
        );
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A failure names the stage and the log, never the output.
        let e = run(
            &hook("echo secret=hunter2; exit 3", 10),
            &ctx(&[]),
            dir.path(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hook after_healthy (command) exited with code 3"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn not_yet_is_asked_again_within_the_timeout_and_then_fails() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Not yet twice, then yes.
        let h = hook(
            &format!(
                "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ] || exit 75",
                c = count.display()
            ),
            20,
        );
        let took = run(&h, &ctx(&[]), dir.path()).await.unwrap();
        assert!(took >= Duration::from_secs(2), "{took:?}");
        assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
        // Never ready: fails when its time is up, saying so.
        let e = run(&hook("exit 75", 3), &ctx(&[]), dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("still answered \"not yet\""), "{e}");
        // A command that hangs is ended at its timeout.
        let started = Instant::now();
        let e = run(&hook("sleep 30", 1), &ctx(&[]), dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.contains("did not finish within its timeout"), "{e}");
    }

    #[tokio::test]
    async fn a_url_hook_is_posted_the_context_and_503_is_not_yet() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = vec![];
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = String::new();
                let mut buf = vec![0; 4096];
                // The head and the JSON body, in as many reads as they come.
                while !got.ends_with('}') {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed early: {got}");
                    got.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                seen.push(got);
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
            seen
        });
        let dir = tempfile::tempdir().unwrap();
        let h = HookSettings {
            command: None,
            url: Some(format!("http://{addr}/check?key=k")),
            timeout_secs: 10,
            retry_secs: 1,
        };
        run(&h, &ctx(&[]), dir.path()).await.unwrap();
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("POST /check?key=k HTTP/1.1"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].contains("\"stage\":\"after_healthy\""),
            "{}",
            seen[1]
        );
        assert_eq!(
            url_address("http://h.example/x?key=1").as_deref(),
            Some("h.example:80")
        );
    }
}
