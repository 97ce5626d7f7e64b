//! What `berth up` shows while it works: on a terminal, a live line per service (pulling,
//! creating, starting, waiting for health, done or failed), as compose does; in a pipe or a log,
//! one plain line per change; with `--quiet`, nothing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Plain,
    Quiet,
    /// Through tracing (the resident agent: to the journal).
    Log,
}

impl Mode {
    /// Live on a terminal, plain otherwise; quiet wins.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// The stages of `up` that the outside follows (the agent's health endpoint and systemd status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Pulling images (only when some are missing).
    Pulling,
    /// Creating and starting containers, in dependency order.
    Starting,
    /// Waiting for a service's healthcheck to pass.
    Waiting,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pulling => "pulling",
            Stage::Starting => "starting",
            Stage::Waiting => "waiting",
        }
    }
}

/// Told of each [`Stage`] as `up` enters it.
pub type StageSink = Arc<dyn Fn(Stage) + Send + Sync>;

/// The first line of a message: a live line or a status shows one.
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Shared by all the tasks of one run.
#[derive(Clone)]
pub struct Progress {
    mode: Mode,
    started: Instant,
    multi: MultiProgress,
    bars: Arc<Mutex<HashMap<String, ProgressBar>>>,
    stages: Option<StageSink>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            started: Instant::now(),
            multi: MultiProgress::new(),
            bars: Arc::new(Mutex::new(HashMap::new())),
            stages: None,
        }
    }

    /// Also tells `sink` of each stage.
    pub fn with_stages(mut self, sink: StageSink) -> Progress {
        self.stages = Some(sink);
        self
    }

    pub fn stage(&self, stage: Stage) {
        if let Some(sink) = &self.stages {
            sink(stage);
        }
    }

    fn bar(&self, subject: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        bars.entry(subject.to_string())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                let style = ProgressStyle::with_template(" {spinner} {prefix:<28} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_prefix(subject.to_string());
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            })
            .clone()
    }

    /// A subject (service, image, network) moved to a new state.
    pub fn update(&self, subject: &str, state: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Log => tracing::info!(subject, state, "progress"),
            Mode::Plain => {
                let t = self.started.elapsed().as_secs_f64();
                eprintln!("[{t:6.2}s] {subject:<28} {state}");
            }
            Mode::Live => self.bar(subject).set_message(state.to_string()),
        }
    }

    /// A subject reached its final state.
    pub fn finish(&self, subject: &str, state: &str) {
        match self.mode {
            Mode::Live => {
                let bar = self.bar(subject);
                bar.set_style(
                    ProgressStyle::with_template("   {prefix:<28} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(state.to_string());
            }
            _ => self.update(subject, state),
        }
    }

    /// A warning shown whatever the mode but quiet.
    pub fn warn(&self, message: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Log => tracing::warn!("{message}"),
            Mode::Live => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            Mode::Plain => eprintln!("warning: {message}"),
        }
    }
}
