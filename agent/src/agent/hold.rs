//! Holding: after the boot the agent stays resident. It answers the control socket, upgrades
//! when the release pointer moves (`upgrade.watch_secs`), expires the kept previous release
//! (`upgrade.keep_previous_secs`), keeps what serves serving ([`watchdog`]), and leaves on a
//! scale-in, a spot notice, a system shutdown or `berth leave`. A signal alone ends only the
//! agent, recording what serves for the next one ([`resume`]).
//!
//! [`resume`]: super::resume
//!
//! [`watchdog`]: super::watchdog

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::boot::Booted;
use super::deployer::Deployer;
use super::leave::{leave, wait_for_leave, Leave, Signals, Why};
use super::{control, notify, resume, set_phase, watchdog, AgentError};
use crate::config::Strategy;
use crate::engine::progress::{Mode, Progress};
use crate::exit::Coded;
use crate::release;
use crate::serve::{AgentState, Phase};
use crate::upgrade::{self, UpgradeError, UpgradeLock};

pub async fn hold(
    state: &AgentState,
    booted: &Booted,
    gate: &control::Gate,
    mut asked: control::LeaveRequests,
) -> Result<(), AgentError> {
    let deployer = &booted.deployer;
    let config = &deployer.config;
    gate.open(deployer.clone());
    resume::note(state, &config.run_dir);
    tracing::info!(project = %booted.project.name, instance = %booted.identity.instance_id, "holding");
    release_code();
    let watcher = (config.upgrade.watch_secs > 0 && config.release.is_some())
        .then(|| tokio::spawn(watch(deployer.clone())));
    let keeper = match (config.upgrade.strategy, config.upgrade.keep_previous_secs) {
        (Strategy::Proxy, Some(secs)) => Some(tokio::spawn(expire_previous(
            deployer.clone(),
            Duration::from_secs(secs),
        ))),
        _ => None,
    };
    let dog = config
        .watchdog
        .enabled
        .then(|| tokio::spawn(watchdog::watch(deployer.clone(), state.clone())));
    let previews = (config.upgrade.strategy == Strategy::Proxy)
        .then(|| tokio::spawn(expire_previews(deployer.clone())));
    // The previous release's recent traffic, for an upgrade's analysis.
    let analysis = &config.upgrade.analysis;
    let sampler = (config.upgrade.strategy == Strategy::Proxy && analysis.enabled).then(|| {
        let window = config.upgrade.verify_secs + analysis.bake_secs;
        let keep = Duration::from_secs(window.max(analysis.max_secs) + 5);
        tokio::spawn(crate::serve::traffic::sample(
            config.proxy.control.clone(),
            state.recent.clone(),
            keep,
        ))
    });
    // A task of its own, like the others: signals, a leave and the watchdog are heeded while
    // it upgrades.
    let once_more = (!booted.release_flag).then(|| {
        let deployer = deployer.clone();
        tokio::spawn(async move { pointer_once_more(&deployer).await })
    });
    let mut signals = Signals::watch();
    let (why, asker) = wait_for_leave(config.local, &mut asked, &mut signals).await;
    // Before the drain: the watchdog would take the drain's 503 and stopped containers for
    // faults to repair.
    for task in [watcher, keeper, dog, previews, once_more, sampler]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    let reason = match why {
        Why::Exit(signal) => {
            notify(&[sd_notify::NotifyState::Stopping]);
            resume::note(state, &config.run_dir);
            tracing::info!(
                signal,
                "exiting; the services, the proxy and its route keep serving (berth leave stops them)"
            );
            return Ok(());
        }
        Why::Leave(reason) => reason,
    };
    // STOPPING=1 only when this process is about to end: a service that says it is stopping
    // is killed at TimeoutStopSec, and one that has left stays.
    if reason == Leave::Shutdown {
        notify(&[sd_notify::NotifyState::Stopping]);
    }
    let left = leave(state, booted, reason).await;
    if left.is_ok() && reason != Leave::Shutdown {
        // Left, and still here until stopped: an agent that exited would be started again by
        // the next health check (berth.socket) and boot the services again.
        set_phase(state, Phase::Left);
        gate.close();
    }
    if let Some(asker) = asker {
        let answer = match &left {
            Ok(l) => control::Answer::ok(control::Reply::Left(l.clone())),
            Err(e) => control::Answer::failed(crate::report::chain(e), e.exit()),
        };
        let _ = asker.send(answer);
    }
    left?;
    if reason != Leave::Shutdown {
        let signal = signals.next().await;
        notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!(signal, "left; exiting");
    }
    Ok(())
}

/// Hands the code the boot (or an upgrade) ran back to the kernel: holding refaults only what
/// it runs ([`crate::proxy::pages`]; measured 12.1 MiB resident while holding before, see the
/// README's figures).
pub(super) fn release_code() {
    match crate::proxy::pages::release_code() {
        Ok(bytes) => tracing::debug!(bytes, "boot code paged out"),
        Err(e) => tracing::debug!(error = %e, "boot code not paged out"),
    }
}

/// Before an upgrade or rollback: its code comes back with readahead, not a read per page.
pub(super) fn expect_code() {
    if let Err(e) = crate::proxy::pages::expect_code() {
        tracing::debug!(error = %e, "readahead not restored");
    }
}

/// Removes the stopped previous release after `keep` (checked every quarter of it).
async fn expire_previous(deployer: Arc<Deployer>, keep: Duration) {
    let mut seen = BTreeMap::new();
    let tick = (keep / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        // Not while an upgrade or rollback runs: they decide about the previous release.
        let Ok(_lock) =
            UpgradeLock::acquire(&deployer.config.run_dir, "expiring the previous release")
        else {
            continue;
        };
        let result = async {
            let project = &deployer.config.project;
            let engine = deployer.engine().await?;
            if let Some(routed) = upgrade::routed_from_labels(engine, project).await? {
                let progress = Progress::new(Mode::Quiet);
                deployer
                    .upgrader(engine, &progress, false)
                    .expire_previous(&routed, &mut seen, keep)
                    .await?;
            }
            Ok::<(), AgentError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %crate::report::chain(&e), "expiring the previous release");
        }
    }
}

/// Ends a preview that has outlived `upgrade.preview_secs` (looked at every second).
async fn expire_previews(deployer: Arc<Deployer>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        deployer.expire_preview().await;
    }
}

/// Once in service: the pointer once more. A rollout that listed the group while this
/// instance was booting did not send it the release, and the pointer may have moved after the
/// boot read it: the release it names now is deployed, as an upgrade.
async fn pointer_once_more(deployer: &Deployer) {
    let Some(pointer) = &deployer.config.release else {
        return;
    };
    let (wanted, current) = match moved(deployer, pointer, "once more").await {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::info!("in service: the release pointer, read once more, names the release this instance runs");
            return;
        }
        Err(()) => return,
    };
    tracing::info!(release = %wanted, booted = ?current, "the release pointer moved while this instance booted: upgrading");
    if let Err(e) = deployer.upgrade(Some(wanted.clone())).await {
        tracing::error!(release = %wanted, error = %crate::report::chain(&e), "upgrading to the release the pointer names now failed");
    }
}

/// The release the pointer names, when it is not the serving one (with the serving one);
/// None when it is; an error when the pointer cannot be read (said, with `why` it was read).
async fn moved(
    deployer: &Deployer,
    pointer: &release::Location,
    why: &str,
) -> Result<Option<(String, Option<String>)>, ()> {
    let read = release::fetch(
        deployer.aws.as_ref(),
        pointer,
        deployer.config.max_object_bytes,
    )
    .await;
    let wanted = match read {
        Ok((bytes, _)) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(e) => {
            tracing::warn!(error = %crate::report::chain(&e), "{why}: cannot read the release pointer");
            return Err(());
        }
    };
    let current = deployer.state.as_ref().and_then(|s| s.snapshot().release);
    Ok((!wanted.is_empty() && Some(&wanted) != current.as_ref()).then_some((wanted, current)))
}

/// Upgrades when the release pointer names another release.
async fn watch(deployer: Arc<Deployer>) {
    let every = Duration::from_secs(deployer.config.upgrade.watch_secs);
    let Some(pointer) = deployer.config.release.clone() else {
        return;
    };
    let mut failed: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let Ok(Some((wanted, current))) = moved(&deployer, &pointer, "watch").await else {
            continue;
        };
        // A release that failed is not retried until the pointer moves on.
        if Some(&wanted) == failed.as_ref() {
            continue;
        }
        tracing::info!(release = %wanted, previous = ?current, "watch: the release pointer moved");
        expect_code();
        match deployer.upgrade(Some(wanted.clone())).await {
            Ok(_) => failed = None,
            Err(AgentError::Upgrade(UpgradeError::Busy { .. })) => {}
            Err(e) => {
                tracing::error!(release = %wanted, error = %crate::report::chain(&e), "watch: upgrade failed");
                failed = Some(wanted);
            }
        }
        release_code();
    }
}
