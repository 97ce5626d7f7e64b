//! berth: an on-instance bootstrap and deploy agent, and a docker-compose engine on the Docker
//! Engine API (no compose binary).
//!
//! `berth agent` is what an AutoScaling instance runs at boot (systemd starts it): it reads its
//! identity from IMDSv2, fetches the release (compose file, env files, release id) from S3, SSM
//! or local paths, pulls images (ECR tokens), converges, answers the load balancer's health
//! checks, completes the launch lifecycle hook and waits until the load balancer marks it
//! healthy; then it holds. Its settings: `/etc/berth/berth.toml` (`--config`; every key is in the
//! README). `berth plan --config` shows what that boot would do here. A SIGTERM ends only the
//! agent (the next one resumes what serves) unless the system is shutting down; leaving (drain,
//! then stop the services) is for a scale-in, a spot notice, a shutdown or `berth leave`.
//!
//! `berth upgrade`, `rollback`, `status` and `leave` (what an SSM Run Command runs) ask the resident
//! agent over its control socket, or act in-process when no agent runs. `berth proxy` is the
//! traffic proxy of the proxy strategy, its own process.
//!
//! `berth up` converges the daemon to compose files and waits until every service is running,
//! healthy where it has a healthcheck, and completed where others wait for it (like
//! `docker compose up -d --wait`). `plan` shows what `up` would do and changes nothing; `down`,
//! `ps` and `config` do what compose's do.
//!
//! Environment:
//! - `DOCKER_HOST`: the Docker endpoint (default `unix:///var/run/docker.sock`).
//! - `DOCKER_CONFIG`: where registry credentials are read (`config.json`, default `~/.docker`).
//! - `COMPOSE_PROJECT_NAME`, `COMPOSE_PROFILES`: as in compose.
//! - `BERTH_LOG`: the log filter (tracing `EnvFilter` syntax; default `warn`, `info` for `agent`;
//!   a bare level applies to berth's own logs, other crates stay at `warn` unless named).
//!   Under systemd (`JOURNAL_STREAM` set), logs go to the journal.
//! - AWS: the SDK's usual variables (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`,
//!   `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`); role credentials from
//!   IMDS on EC2.
//!
//! Exit codes: the table in `exit.rs` (0 done, 1 a service or the new release failed, 2 bad
//! command line, 3 bad input, 4 Docker or a socket, 5 an image, 6 AWS, 7 busy).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth::agent::control::Request;
use berth::commands::{self, CommandError, ProjectArgs};
use berth::engine::progress::{Mode, Progress};
use berth::exit::Coded;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BERTH_GIT_COMMIT"), ")"),
    about = "Run compose stacks on the Docker Engine API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct ProjectFlags {
    /// Compose file(s); later files override earlier ones.
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Project name (default: COMPOSE_PROJECT_NAME, the file's `name:`, the directory name).
    #[arg(short = 'p', long = "project-name")]
    project_name: Option<String>,
    /// Env file(s) for interpolation (default: `.env` beside the first compose file).
    #[arg(long = "env-file")]
    env_files: Vec<PathBuf>,
    /// Enable services of this profile (also COMPOSE_PROFILES).
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// The host policy: a berth.toml whose `[policy]` is read (default: /etc/berth/berth.toml
    /// when it exists, else the default policy, which refuses what reaches the host).
    #[arg(long = "policy")]
    policy: Option<PathBuf>,
}

impl From<ProjectFlags> for ProjectArgs {
    fn from(f: ProjectFlags) -> Self {
        ProjectArgs {
            files: f.files,
            project_name: f.project_name,
            env_files: f.env_files,
            profiles: f.profiles,
            policy: f.policy,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge and wait until every service is up (like `docker compose up -d --wait`).
    Up {
        #[command(flatten)]
        project: ProjectFlags,
        /// Give up waiting for services after this many seconds.
        #[arg(long, default_value_t = 300)]
        wait_timeout: u64,
        /// Remove containers of services no longer in the project.
        #[arg(long)]
        remove_orphans: bool,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show what `up` (or, with --config, the agent's boot) would do; change nothing.
    Plan {
        #[command(flatten)]
        project: ProjectFlags,
        /// Plan the agent's boot from its config instead of compose files.
        #[arg(long, conflicts_with_all = ["files", "env_files", "profiles", "policy"])]
        config: Option<PathBuf>,
        /// With --config: a local run (no IMDS, no AWS).
        #[arg(long, requires = "config")]
        local: bool,
        /// With --config: the release id, instead of the config's `release` location.
        #[arg(long, requires = "config")]
        release: Option<String>,
        #[arg(long)]
        remove_orphans: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove the project's containers and networks.
    Down {
        #[command(flatten)]
        project: ProjectFlags,
        /// Remove the project's volumes too.
        #[arg(short = 'v', long)]
        volumes: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Check that a berth package is signed by a trusted key (/usr/share/berth/keys and
    /// /etc/berth/keys); the SSM operations document runs it before installing one.
    VerifyPackage {
        /// The .deb or .rpm.
        file: PathBuf,
        /// Its minisign signature (default: FILE.minisig).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Directories of trusted `*.pub` keys instead of the installed ones.
        #[arg(long = "keys")]
        keys: Vec<PathBuf>,
    },
    /// List the project's containers.
    Ps {
        #[command(flatten)]
        project: ProjectFlags,
        #[arg(long)]
        json: bool,
    },
    /// The resident agent: boot this instance to the current release, then hold.
    Agent {
        /// The agent's settings.
        #[arg(long, default_value = berth::config::DEFAULT_PATH)]
        config: PathBuf,
        /// A local run: no IMDS, no AWS calls, local paths only.
        #[arg(long)]
        local: bool,
        /// The release id, instead of the config's `release` location.
        #[arg(long)]
        release: Option<String>,
        /// Exit once in service instead of holding.
        #[arg(long)]
        once: bool,
    },
    /// The traffic proxy: owns the traffic port, forwards to the active release; its route is
    /// changed over the control socket. Its own process, so that it outlives the agent.
    Proxy {
        /// Where clients (the load balancer) connect; unused when systemd passes the listening
        /// socket (berth-proxy.socket).
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// The control socket (created 0600).
        #[arg(long, default_value = "/run/berth-proxy.sock")]
        control: PathBuf,
        /// A backend to start with, repeated for several (else the saved route, else none: 503).
        #[arg(long)]
        backend: Vec<std::net::SocketAddr>,
        /// Where the route is saved, so that a restarted proxy resumes it.
        #[arg(long)]
        state: Option<PathBuf>,
        /// On SIGTERM, how long in-flight requests may take to finish.
        #[arg(long, default_value_t = 30)]
        drain_secs: u64,
        /// A new connection has this long to send a complete request head.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        header_timeout_secs: u64,
        /// A kept-alive connection may idle this long; keep it above the load balancer's idle
        /// timeout (the ALB's is 60 s), so that the load balancer always closes first.
        #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout_secs: u64,
        /// A backend that does not accept a connection within this is skipped.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        connect_timeout_secs: u64,
        /// A request that finds no backend accepting connections waits this long for the route
        /// to change (the agent routes a restarted replica again) before its 502; 0: no wait.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
        /// A backend's response head must come within this after the request's end (504); 0:
        /// no limit (for long polls that answer later).
        #[arg(long, default_value_t = 60)]
        response_timeout_secs: u64,
        /// A client sending a request body may pause this long between bytes (then 408).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        body_timeout_secs: u64,
        /// A client may take this long to accept more response bytes (then the connection is
        /// closed), and a backend to accept more of a request body (then 504).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        send_timeout_secs: u64,
        /// The largest request head (431 above it).
        #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(8192..=16_777_216))]
        max_header_bytes: u64,
        /// Believe X-Forwarded-* headers only from peers in this range (repeated for
        /// several); by default from every peer.
        #[arg(long, value_name = "CIDR")]
        trust_forwarded: Vec<ipnet::IpNet>,
        /// Do not time requests or count them by status (in flight and served still are).
        #[arg(long)]
        no_metrics: bool,
        /// A request whose header of this name names the release in preview (`berth upgrade
        /// --preview`) goes to that release; everyone else stays on the route.
        #[arg(long, default_value = "X-Berth-Preview", value_parser = clap::value_parser!(hyper::header::HeaderName))]
        preview_header: hyper::header::HeaderName,
        /// ...and so does one whose cookie of this name does.
        #[arg(long, default_value = "berth-preview", value_parser = cookie_name)]
        preview_cookie: String,
        /// During a weighted canary (`berth upgrade --canary`), the cookie that keeps each
        /// session on the side it was given.
        #[arg(long, default_value = "berth-canary", value_parser = cookie_name)]
        canary_cookie: String,
        /// Worker threads, each with its own listener and runtime (default: one per CPU
        /// this process may run on).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
        workers: Option<u64>,
        /// On SIGTERM (`systemctl restart`), park open connections (kept-alive ones, long
        /// polls, SSE streams and other bodies on their way, WebSockets) in systemd's file descriptor
        /// store for the next proxy, which goes on with them: the unit needs
        /// `FileDescriptorStoreMax=`, and --state (the note of where each one was goes
        /// beside it).
        #[arg(long, requires = "state")]
        fd_store: bool,
    },
    /// Print the resolved project (environment values, and .env values wherever interpolated,
    /// masked).
    Config {
        #[command(flatten)]
        project: ProjectFlags,
        /// yaml or json, in compose's own shape (diff it against `docker compose config`).
        #[arg(long, value_enum, default_value = "yaml")]
        format: commands::ConfigFormat,
    },
    /// Upgrade to a release (default: the one the release pointer names) with the configured
    /// strategy; through the running agent, or in-process when none runs. Prints the outcome
    /// as JSON. A failed upgrade leaves the previous release serving (exit 1).
    Upgrade {
        #[command(flatten)]
        agent: AgentFlags,
        /// The release id (the compose file's `${RELEASE}`), instead of the release pointer.
        #[arg(long)]
        release: Option<String>,
        /// Proxy strategy: stop before the switch. Only requests that carry the preview's
        /// token (in the answer, `preview_token`; the proxy's preview header or cookie) reach
        /// it, until `berth promote` or `berth rollback` (or `upgrade.preview_secs`, which
        /// rolls back).
        #[arg(long, conflicts_with = "canary")]
        preview: bool,
        /// With --preview: the Unix time its token ends (a rollout gives every instance the
        /// same, so that they derive one token); default now and `upgrade.preview_secs`.
        #[arg(long, requires = "preview")]
        preview_until: Option<u64>,
        /// Proxy strategy: before the switch, a weighted canary: these shares of new sessions
        /// (percent, rising; default `upgrade.canary.steps`) in turn, each sticky by cookie and
        /// held for `upgrade.canary.step_secs` while the analysis compares both releases.
        #[arg(long, value_name = "PERCENT,...", value_delimiter = ',', num_args = 0..=1)]
        canary: Option<Vec<u8>>,
        /// Go on when the release it would go back to is no longer complete (an image or an
        /// object of it deleted): said in the answer and in `/status`.
        #[arg(long)]
        allow_no_rollback: bool,
    },
    /// Make a release (`create`), or show one (`show`): one pinned, immutable manifest of the
    /// compose file, its env files, secrets' sources and every image by digest.
    Release {
        #[command(subcommand)]
        action: ReleaseCommand,
    },
    /// The recent releases of the store, newest first, with what each instance and rollout
    /// said of them.
    Releases {
        #[command(flatten)]
        store: StoreFlags,
        /// How many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Release to the whole AutoScaling group, from CI or a laptop: write the release
    /// parameter, upgrade one InService instance (its agent judges the release), then the rest
    /// through SSM Run Command; on any failure put the previous release back everywhere.
    /// Progress on stderr, a JSON summary on stdout.
    Rollout {
        /// The release id (the compose file's `${RELEASE}`, e.g. the image tag).
        release: String,
        /// The AutoScaling group (the stack's AutoScalingGroupName output).
        #[arg(long)]
        group: String,
        /// The SSM document (the stack's UpgradeDocumentName output).
        #[arg(long)]
        document: String,
        /// The release parameter (the stack's ReleaseParameterName output).
        #[arg(long)]
        parameter: String,
        /// After the canary: instances upgraded at once (a number or a percentage).
        #[arg(long, default_value = "1")]
        max_concurrency: String,
        /// After the canary: failures tolerated before SSM stops sending.
        #[arg(long, default_value = "0")]
        max_errors: String,
        /// The longest one SSM command (the canary's, the rest's) may take.
        #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(30..))]
        command_secs: u64,
        /// How often to look at a command's progress.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        poll_secs: u64,
        /// First preview the release on every instance and run this shell command against it
        /// (BERTH_PREVIEW_TOKEN is set: send `X-Berth-Preview: $BERTH_PREVIEW_TOKEN`; and
        /// BERTH_PREVIEW_RELEASE); only if it succeeds does the canary switch.
        #[arg(long, conflicts_with = "weighted")]
        smoke: Option<String>,
        /// The canary instance takes the release through its weighted canary (`berth upgrade
        /// --canary`: shares of its sessions, judged beside the serving release) before the
        /// rest are sent it.
        #[arg(long)]
        weighted: bool,
        /// The release store (the instances' `manifests`, s3://bucket/prefix/): the way back
        /// is checked complete before anything moves, and the outcome is recorded with the
        /// release.
        #[arg(long)]
        store: Option<String>,
        /// Go on when the way back (the release serving now) is no longer complete.
        #[arg(long)]
        allow_no_rollback: bool,
        /// The account that must own the store's bucket (x-amz-expected-bucket-owner).
        #[arg(long, value_parser = account_id)]
        bucket_owner: Option<String>,
        /// A CloudWatch alarm (repeat for more): one in ALARM before the rollout refuses it;
        /// one going to ALARM during the canary, the bake or the rest fails the release, and
        /// the fleet goes back.
        #[arg(long = "alarm", value_name = "NAME")]
        alarms: Vec<String>,
        /// Start although an alarm is in ALARM already (it counts if it goes to ALARM again).
        #[arg(long, requires = "alarms")]
        ignore_alarm: bool,
        /// After the canary, hold this long watching the alarms before the rest.
        #[arg(long, default_value_t = 0)]
        bake_secs: u64,
    },
    /// The release in preview takes the traffic, watched and judged as any upgrade.
    Promote {
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Serve the previous release again (proxy strategy; it is kept until the next upgrade),
    /// or end a preview.
    Rollback {
        #[command(flatten)]
        agent: AgentFlags,
        /// Go back across a contract migration: the previous release runs against a schema it
        /// may not read (berth refuses without this, and says what it risks).
        #[arg(long)]
        force: bool,
    },
    /// The agent's phase, the releases (colors) on this host, the proxy's route and its traffic
    /// per release, as JSON.
    Status {
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Take this instance out: `/healthz` fails, the load balancer stops sending, requests in
    /// flight finish, the services stop in dependency order (what a scale-in or a system
    /// shutdown does; a restart of the agent leaves them running). Prints what it did as JSON.
    Leave {
        #[command(flatten)]
        agent: AgentFlags,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Make release ID: upload what is local (under the store's releases/ID/), pin what is in
    /// S3 or SSM at its version, resolve every image to its digest at its registry, and write
    /// the manifest, once. Prints the manifest.
    Create {
        /// The release id (what the release pointer will name).
        release: String,
        #[command(flatten)]
        store: StoreFlags,
        /// The compose file: a path, s3://bucket/key or ssm:/name (default: --config's).
        #[arg(short = 'f', long = "compose")]
        compose: Option<String>,
        /// An env file, repeated for several (default: --config's, unless --compose is given).
        #[arg(long = "env-file")]
        env_files: Vec<String>,
        /// The source commit, recorded in the manifest.
        #[arg(long)]
        commit: Option<String>,
        /// Who makes it (default: user@host).
        #[arg(long)]
        by: Option<String>,
    },
    /// Print release ID's manifest.
    Show {
        release: String,
        #[command(flatten)]
        store: StoreFlags,
    },
}

#[derive(Debug, Args, Clone)]
struct StoreFlags {
    /// The release store: s3://bucket/prefix/ or a directory (default: `manifests` of --config).
    #[arg(long)]
    store: Option<String>,
    /// berth.toml: its `manifests` store, and for `create` its compose file, env files,
    /// release variable and registries.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The account that must own the store's bucket (default: --config's `bucket_owner`).
    #[arg(long, value_parser = account_id)]
    bucket_owner: Option<String>,
}

impl From<StoreFlags> for commands::StoreArgs {
    fn from(f: StoreFlags) -> Self {
        commands::StoreArgs {
            store: f.store,
            config: f.config,
            bucket_owner: f.bucket_owner,
        }
    }
}

#[derive(Debug, Args, Clone)]
struct AgentFlags {
    /// The agent's settings.
    #[arg(long, default_value = berth::config::DEFAULT_PATH)]
    config: PathBuf,
    /// No IMDS, no AWS: as `local = true` in the config.
    #[arg(long)]
    local: bool,
}

impl AgentFlags {
    /// Asks the agent (or acts in-process) and prints its answer.
    async fn ask(&self, request: Request) -> Result<(), CommandError> {
        print!(
            "{}",
            commands::control(&self.config, self.local, request).await?
        );
        Ok(())
    }
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    // Run by SSM Run Command, whose output keeps stdout first: a failure's verdict goes there
    // too, one line of JSON, so that `berth rollout` reads it however long stderr grew.
    let verdict_on_stdout = matches!(
        cli.command,
        Command::Upgrade { .. }
            | Command::Promote { .. }
            | Command::Rollback { .. }
            | Command::Leave { .. }
    );
    init_logging(matches!(
        cli.command,
        Command::Agent { .. }
            | Command::Proxy { .. }
            | Command::Upgrade { .. }
            | Command::Promote { .. }
            | Command::Rollout { .. }
            | Command::Rollback { .. }
            | Command::Leave { .. }
    ));
    // The proxy serves traffic on threads of its own; its main runtime only answers the control
    // socket and waits for signals, so one thread does (and holds no memory for more).
    let mut builder = if matches!(cli.command, Command::Proxy { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return berth::exit::Exit::Failed.into();
        }
    };
    match runtime.block_on(run(cli, started)) {
        Ok(()) => berth::exit::Exit::Ok.into(),
        Err(e) => {
            let message = berth::report::chain(&e);
            eprintln!("error: {message}");
            if verdict_on_stdout {
                // Within SSM's 2,500 characters of output, where it is read.
                let error: String = message.chars().take(2000).collect();
                let verdict =
                    serde_json::json!({"ok": false, "code": e.exit() as u8, "error": error});
                println!("{verdict}");
            }
            e.exit().into()
        }
    }
}

/// The journal when systemd runs us; stderr otherwise. One filter variable: `BERTH_LOG`
/// (`berth::logging`: a bare level raises berth's own logs; other crates only when named).
fn init_logging(agent: bool) {
    use berth::logging::Filter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = if agent {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    let filter = Filter::parse(std::env::var("BERTH_LOG").ok().as_deref(), default);
    let env_filter = || {
        tracing_subscriber::EnvFilter::try_new(filter.directives())
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default.to_string()))
    };
    // Under systemd (stderr is the journal's stream): native journal entries, each event's
    // fields as fields of their own (`journalctl BERTH_PHASE=ready`), spans' as `S<n>_*`.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journal) = tracing_journald::layer() {
            let journal = journal
                .with_field_prefix(Some("BERTH".to_string()))
                .with_syslog_identifier("berth".to_string());
            if tracing_subscriber::registry()
                .with(env_filter())
                .with(journal)
                .try_init()
                .is_ok()
            {
                return;
            }
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli, started: std::time::Instant) -> Result<(), CommandError> {
    match cli.command {
        Command::Up {
            project,
            wait_timeout,
            remove_orphans,
            quiet,
        } => {
            let progress = Progress::new(Mode::detect(quiet));
            let plan = commands::up(
                &project.into(),
                remove_orphans,
                Duration::from_secs(wait_timeout),
                &progress,
            )
            .await?;
            if !quiet && plan.is_noop() {
                eprintln!("{}: up to date", plan.project);
            }
        }
        Command::Plan {
            config: Some(config),
            local,
            release,
            json,
            ..
        } => {
            print!(
                "{}",
                commands::plan_boot(&config, local, release, json).await?
            );
        }
        Command::Proxy {
            listen,
            control,
            backend,
            state,
            drain_secs,
            header_timeout_secs,
            idle_timeout_secs,
            connect_timeout_secs,
            hold_secs,
            response_timeout_secs,
            body_timeout_secs,
            send_timeout_secs,
            max_header_bytes,
            trust_forwarded,
            no_metrics,
            preview_header,
            preview_cookie,
            canary_cookie,
            workers,
            fd_store,
        } => {
            berth::proxy::run(berth::proxy::Settings {
                listen,
                control,
                backends: backend,
                state,
                drain: Duration::from_secs(drain_secs),
                header_timeout: Duration::from_secs(header_timeout_secs),
                idle_timeout: Duration::from_secs(idle_timeout_secs),
                connect_timeout: Duration::from_secs(connect_timeout_secs),
                hold: Duration::from_secs(hold_secs),
                response_timeout: (response_timeout_secs > 0)
                    .then(|| Duration::from_secs(response_timeout_secs)),
                body_timeout: Duration::from_secs(body_timeout_secs),
                send_timeout: Duration::from_secs(send_timeout_secs),
                max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(65_536),
                trusted: (!trust_forwarded.is_empty()).then_some(trust_forwarded),
                metrics: !no_metrics,
                preview_header,
                preview_cookie,
                canary_cookie,
                workers: workers.and_then(|n| usize::try_from(n).ok()),
                fd_store,
            })
            .await?;
        }
        Command::Agent {
            config,
            local,
            release,
            once,
        } => {
            commands::agent(&config, local, release, once, started).await?;
        }
        Command::Plan {
            project,
            remove_orphans,
            json,
            ..
        } => {
            print!(
                "{}",
                commands::plan_compose(&project.into(), remove_orphans, json).await?
            );
        }
        Command::Down {
            project,
            volumes,
            quiet,
        } => {
            let progress = Progress::new(Mode::detect(quiet));
            commands::down(&project.into(), volumes, &progress).await?;
        }
        Command::Ps { project, json } => print!("{}", commands::ps(&project.into(), json).await?),
        Command::VerifyPackage {
            file,
            signature,
            keys,
        } => println!("{}", commands::verify_package(&file, signature, keys)?),
        Command::Config { project, format } => {
            print!("{}", commands::config(&project.into(), format)?)
        }
        Command::Upgrade {
            agent,
            release,
            preview,
            canary,
            allow_no_rollback,
            preview_until,
        } => {
            agent
                .ask(Request::Upgrade {
                    release,
                    preview,
                    canary,
                    allow_no_rollback,
                    preview_until,
                })
                .await?
        }
        Command::Release {
            action:
                ReleaseCommand::Create {
                    release,
                    store,
                    compose,
                    env_files,
                    commit,
                    by,
                },
        } => {
            let args = commands::CreateArgs {
                release,
                compose,
                env_files,
                commit,
                by,
            };
            print!("{}", commands::release_create(&store.into(), &args).await?);
        }
        Command::Release {
            action: ReleaseCommand::Show { release, store },
        } => print!("{}", commands::release_show(&store.into(), &release).await?),
        Command::Releases { store, limit, json } => {
            print!("{}", commands::releases(&store.into(), limit, json).await?)
        }
        Command::Promote { agent } => agent.ask(Request::Promote).await?,
        Command::Rollout {
            release,
            group,
            document,
            parameter,
            max_concurrency,
            max_errors,
            command_secs,
            poll_secs,
            smoke,
            weighted,
            store,
            allow_no_rollback,
            bucket_owner,
            alarms,
            ignore_alarm,
            bake_secs,
        } => {
            let store = store
                .map(|s| {
                    berth::config::Store::parse(&s, std::path::Path::new(".")).map_err(|message| {
                        CommandError::Usage {
                            message: format!("--store: {message}"),
                        }
                    })
                })
                .transpose()?;
            commands::rollout(&berth::fleet::Rollout {
                release,
                group,
                document,
                parameter,
                max_concurrency,
                max_errors,
                command_limit: Duration::from_secs(command_secs),
                poll: Duration::from_secs(poll_secs),
                smoke,
                weighted,
                store,
                allow_no_rollback,
                bucket_owner,
                alarms,
                ignore_alarm,
                bake: Duration::from_secs(bake_secs),
            })
            .await?
        }
        Command::Rollback { agent, force } => agent.ask(Request::Rollback { force }).await?,
        Command::Status { agent } => agent.ask(Request::Status).await?,
        Command::Leave { agent } => agent.ask(Request::Leave).await?,
    }
    Ok(())
}

/// A 12-digit AWS account id.
fn account_id(text: &str) -> Result<String, String> {
    berth::config::check_account_id(text).map(|()| text.to_string())
}

/// A cookie name as RFC 6265 has it (a token): one with `=`, `;` or a space would never match,
/// and no request would ever be seen to carry it.
fn cookie_name(name: &str) -> Result<String, String> {
    let separator = |c: char| "()<>@,;:\\\"/[]?={} \t".contains(c);
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && !separator(c)) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookie_names_are_tokens() {
        assert_eq!(
            super::cookie_name("berth-canary").as_deref(),
            Ok("berth-canary")
        );
        for bad in ["", "a=b", "a;b", "a b", "ä"] {
            assert!(super::cookie_name(bad).is_err(), "{bad:?}");
        }
    }
}
