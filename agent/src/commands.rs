//! The subcommands, each a short composition of the pipeline's stages. They return what to
//! print; `main.rs` prints it and exits with the error's code (`exit.rs`).

use std::path::PathBuf;
use std::time::Duration;

use crate::compose::{self, ComposeError, LoadOptions, Project};
use crate::engine::converge::{self, ConvergeError, PsRow, UpOptions};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::{self, Plan};
use crate::engine::progress::Progress;
use crate::exit::{Coded, Exit};

/// Any subcommand's failure. Exit codes: see `exit.rs`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("cannot encode output: {0}")]
    Output(String),
    /// The agent answered over its control socket with an error, and the exit code.
    #[error("{message}")]
    Refused { message: String, code: Exit },
    #[error("the agent's control socket")]
    Control(#[from] crate::ipc::IpcError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Signature(#[from] crate::signature::SignatureError),
    #[error("{message}")]
    Usage { message: String },
    #[error("{what}")]
    NotFound { what: String },
    /// A rollout that failed and went back (or tried to): its summary is on stdout.
    #[error("the rollout of {release} failed ({error}): {outcome}")]
    RolledBack {
        release: String,
        outcome: &'static str,
        error: String,
    },
}

/// Each cause's own code (see `exit.rs`).
impl Coded for CommandError {
    fn exit(&self) -> Exit {
        match self {
            CommandError::Compose(e) => e.exit(),
            CommandError::Converge(e) => e.exit(),
            CommandError::Docker(e) => e.exit(),
            CommandError::Agent(e) => e.exit(),
            CommandError::Config(e) => e.exit(),
            CommandError::Proxy(e) => e.exit(),
            CommandError::Output(_) => Exit::Failed,
            CommandError::Refused { code, .. } => *code,
            CommandError::Control(e) => e.exit(),
            CommandError::Fleet(e) => e.exit(),
            CommandError::Release(e) => e.exit(),
            CommandError::Policy(_) => Exit::Invalid,
            CommandError::Signature(_) => Exit::Invalid,
            CommandError::Usage { .. } => Exit::Usage,
            CommandError::NotFound { .. } => Exit::Invalid,
            CommandError::RolledBack { outcome, .. }
                if *outcome == crate::fleet::rollout::STOPPED =>
            {
                Exit::NotRolledBack
            }
            CommandError::RolledBack { .. } => Exit::Failed,
        }
    }
}

/// Where a project comes from: the flags compose users know.
#[derive(Debug, Clone, Default)]
pub struct ProjectArgs {
    pub files: Vec<PathBuf>,
    pub project_name: Option<String>,
    pub env_files: Vec<PathBuf>,
    pub profiles: Vec<String>,
    /// A berth.toml whose `[policy]` judges the project (default: /etc/berth/berth.toml when
    /// it exists).
    pub policy: Option<PathBuf>,
}

/// The project, judged by the host policy (`berth up`, `plan`, `config` refuse what the agent
/// would refuse).
pub fn load(args: &ProjectArgs) -> Result<Project, CommandError> {
    let default = PathBuf::from(crate::config::DEFAULT_PATH);
    let file = args
        .policy
        .clone()
        .or_else(|| default.exists().then_some(default));
    let (policy, origin) = match &file {
        Some(path) => (
            crate::config::PolicySettings::load(path)?,
            format!("[policy] of {}", path.display()),
        ),
        None => (
            crate::config::PolicySettings::default(),
            format!(
                "the default policy: no {} and no --policy",
                crate::config::DEFAULT_PATH
            ),
        ),
    };
    // The loader's own choice of project directory: the first file's, else this one.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let project_dir = match args.files.first() {
        Some(f) => cwd.join(f).parent().map_or(cwd.clone(), PathBuf::from),
        None => cwd,
    };
    let mut host = crate::policy::Host {
        project_dir,
        own_files: vec![],
        run_dir: PathBuf::from("/run/berth"),
        state_dir: PathBuf::from("/var/lib/berth"),
        compose_location: None,
        origin,
    };
    let mut opts = options(args);
    opts.read_gate = crate::policy::read_gate(&policy, &host);
    let mut project = compose::load(&opts)?;
    host.project_dir = project.working_dir.clone();
    let warnings = crate::policy::check(&project, &policy, &host)?;
    // A local run names no registries by default: not worth a warning on every command.
    if file.is_some() {
        project.warnings.extend(warnings);
    }
    Ok(project)
}

/// The project as the files say, unjudged: for `down` and `ps`, which ask nothing of the host.
fn read(args: &ProjectArgs) -> Result<Project, CommandError> {
    Ok(compose::load(&options(args))?)
}

fn options(args: &ProjectArgs) -> LoadOptions {
    let mut opts = LoadOptions::from_process(args.files.clone(), args.project_name.clone());
    opts.env_files = args.env_files.clone();
    opts.profiles = args.profiles.clone();
    opts
}

/// The project name without reading compose files (for `down` and `ps`): `-p`, else
/// `COMPOSE_PROJECT_NAME`, else the compose files' name.
pub fn project_name(args: &ProjectArgs) -> Result<String, CommandError> {
    if let Some(name) = args
        .project_name
        .clone()
        .or_else(|| std::env::var("COMPOSE_PROJECT_NAME").ok())
    {
        compose::validate_project_name(&name)?;
        return Ok(name);
    }
    Ok(read(args)?.name)
}

pub async fn up(
    args: &ProjectArgs,
    remove_orphans: bool,
    wait_timeout: Duration,
    progress: &Progress,
) -> Result<Plan, CommandError> {
    let project = load(args)?;
    let engine = Engine::connect().await?;
    let registries = std::sync::Arc::new(crate::engine::registry::Registries::docker_config());
    let opts = UpOptions {
        remove_orphans,
        wait_timeout,
        registries,
        pull_concurrency: crate::config::DEFAULT_PULL_CONCURRENCY,
    };
    Ok(converge::up(&engine, &project, &opts, progress).await?.plan)
}

pub async fn plan_compose(
    args: &ProjectArgs,
    remove_orphans: bool,
    json: bool,
) -> Result<String, CommandError> {
    let project = load(args)?;
    let engine = Engine::connect().await?;
    let plan = converge::plan(&engine, &project, remove_orphans).await?;
    if json {
        serde_json::to_string_pretty(&plan).map_err(|e| CommandError::Output(e.to_string()))
    } else {
        let mut out = String::new();
        for w in &project.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out.push_str(&plan::render(&plan));
        Ok(out)
    }
}

/// `berth plan --config`: what the agent's boot would do on this machine.
pub async fn plan_boot(
    config: &std::path::Path,
    local: bool,
    release: Option<String>,
    json: bool,
) -> Result<String, CommandError> {
    let mut config = crate::config::AgentConfig::load(config)?;
    config.local |= local;
    let opts = crate::agent::AgentOptions {
        config,
        release,
        once: true,
    };
    let plan = crate::agent::plan_boot(&opts).await?;
    if json {
        serde_json::to_string_pretty(&plan).map_err(|e| CommandError::Output(e.to_string()))
    } else {
        Ok(plan::render(&plan))
    }
}

/// `berth agent`: the boot pipeline, then holding.
pub async fn agent(
    config: &std::path::Path,
    local: bool,
    release: Option<String>,
    once: bool,
    started: std::time::Instant,
) -> Result<(), CommandError> {
    let mut config = crate::config::AgentConfig::load(config)?;
    config.local |= local;
    let opts = crate::agent::AgentOptions {
        config,
        release,
        once,
    };
    Ok(crate::agent::run(opts, started).await?)
}

/// `berth upgrade`, `rollback`, `status`: through the resident agent's control socket, or
/// in-process when no agent listens (a local run, or before the agent started).
pub async fn control(
    config: &std::path::Path,
    local: bool,
    request: crate::agent::control::Request,
) -> Result<String, CommandError> {
    let mut config = crate::config::AgentConfig::load(config)?;
    config.local |= local;
    let socket = config.control_socket();
    let value = match crate::agent::control::request(&socket, &request).await? {
        Some(a) if a.ok => a.result.unwrap_or_default(),
        Some(a) => {
            return Err(CommandError::Refused {
                message: a.error.unwrap_or_else(|| "the agent refused".into()),
                code: a.code.map_or(Exit::Failed, Exit::from_code),
            })
        }
        None => {
            tracing::info!(socket = %socket.display(), "no agent listening: acting in-process");
            let deployer = crate::agent::Deployer::in_process(config).await?;
            let reply = deployer
                .handle_request(request)
                .await
                .map_err(CommandError::Agent)?;
            serde_json::to_value(reply).map_err(|e| CommandError::Output(e.to_string()))?
        }
    };
    let mut text =
        serde_json::to_string_pretty(&value).map_err(|e| CommandError::Output(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Where `berth release` and `berth releases` find the store: `--store`, else the config's
/// `manifests`.
#[derive(Debug, Clone, Default)]
pub struct StoreArgs {
    pub store: Option<String>,
    pub config: Option<PathBuf>,
    /// The account that must own the store's bucket (default: the config's `bucket_owner`).
    pub bucket_owner: Option<String>,
}

/// What `berth release create` makes a release of (unset: from `--config`).
#[derive(Debug, Clone, Default)]
pub struct CreateArgs {
    pub release: String,
    pub compose: Option<String>,
    pub env_files: Vec<String>,
    pub commit: Option<String>,
    pub by: Option<String>,
}

/// The store and the settings that go with it, and AWS when anything is remote.
async fn store_of(
    args: &StoreArgs,
) -> Result<
    (
        crate::config::Store,
        Option<crate::config::AgentConfig>,
        Option<crate::aws::Aws>,
    ),
    CommandError,
> {
    let config = args
        .config
        .as_deref()
        .map(crate::config::AgentConfig::load)
        .transpose()?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let store = match (&args.store, config.as_ref().and_then(|c| c.manifests.clone())) {
        (Some(s), _) => crate::config::Store::parse(s, &cwd).map_err(|message| {
            CommandError::Usage {
                message: format!("--store: {message}"),
            }
        })?,
        (None, Some(s)) => s,
        (None, None) => {
            return Err(CommandError::Usage {
                message: "no release store: give --store s3://bucket/prefix/ (or a directory), or --config with `manifests`".into(),
            })
        }
    };
    let remote = matches!(store, crate::config::Store::S3 { .. })
        || config.as_ref().is_some_and(|c| !c.compose.is_local());
    let aws = if remote {
        let path_style = config.as_ref().is_some_and(|c| c.s3_path_style);
        let owner = args
            .bucket_owner
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.bucket_owner.clone()));
        Some(crate::aws::Aws::load(None, path_style, Duration::from_secs(60), owner).await)
    } else {
        None
    };
    Ok((store, config, aws))
}

/// `berth release create`: the manifest as written, on stdout.
pub async fn release_create(store: &StoreArgs, args: &CreateArgs) -> Result<String, CommandError> {
    let (store_location, config, mut aws) = store_of(store).await?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let parse = |flag: &str, text: &str| {
        crate::config::Location::parse(text, &cwd).map_err(|message| CommandError::Usage {
            message: format!("{flag}: {message}"),
        })
    };
    let compose = match (&args.compose, &config) {
        (Some(c), _) => parse("--compose", c)?,
        (None, Some(c)) => c.compose.clone(),
        (None, None) => {
            return Err(CommandError::Usage {
                message:
                    "no compose file: give --compose (a path, s3://... or ssm:/...) or --config"
                        .into(),
            })
        }
    };
    let env_files = if args.env_files.is_empty() && args.compose.is_none() {
        config
            .as_ref()
            .map(|c| c.env_files.clone())
            .unwrap_or_default()
    } else {
        args.env_files
            .iter()
            .map(|e| parse("--env-file", e))
            .collect::<Result<Vec<_>, _>>()?
    };
    if aws.is_none() && (!compose.is_local() || env_files.iter().any(|e| !e.is_local())) {
        let owner = store
            .bucket_owner
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.bucket_owner.clone()));
        aws = Some(crate::aws::Aws::load(None, false, Duration::from_secs(60), owner).await);
    }
    let registries = crate::engine::registry::Registries::new(
        config
            .as_ref()
            .map(|c| c.registries.clone())
            .unwrap_or_default(),
        aws.as_ref().map(|a| a.ecr.clone()),
    );
    let opts = crate::release::create::CreateOptions {
        release: args.release.clone(),
        store: store_location,
        compose,
        env_files,
        commit: args.commit.clone(),
        by: args.by.clone(),
        release_var: config
            .as_ref()
            .map_or_else(|| "RELEASE".to_string(), |c| c.release_var.clone()),
        max_object_bytes: config
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_OBJECT_BYTES, |c| {
                c.max_object_bytes
            }),
    };
    let (manifest, version) =
        crate::release::create::create(aws.as_ref(), &registries, &opts).await?;
    eprintln!(
        "release {} created: {}{}",
        manifest.release,
        crate::release::store::display(
            &opts.store,
            &crate::release::store::manifest_key(&manifest.release)
        ),
        version
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default()
    );
    Ok(String::from_utf8_lossy(&manifest.to_bytes()).into_owned())
}

/// `berth release show ID`: the manifest, as stored.
pub async fn release_show(store: &StoreArgs, id: &str) -> Result<String, CommandError> {
    let (store_location, config, aws) = store_of(store).await?;
    let cap = config
        .as_ref()
        .map_or(crate::config::DEFAULT_MAX_OBJECT_BYTES, |c| {
            c.max_object_bytes
        });
    if !crate::release::manifest::is_release_id(id) {
        return Err(crate::release::ReleaseError::BadId(id.into()).into());
    }
    let key = crate::release::store::manifest_key(id);
    let location = crate::release::store::display(&store_location, &key);
    let read = crate::release::store::get_first(aws.as_ref(), &store_location, &key, cap)
        .await?
        .ok_or_else(|| CommandError::NotFound {
            what: format!("release {id}: no manifest at {location}"),
        })?;
    let manifest = crate::release::Manifest::parse(&read.bytes, &location, id)
        .map_err(crate::release::ReleaseError::from)?;
    Ok(String::from_utf8_lossy(&manifest.to_bytes()).into_owned())
}

/// `berth releases`: the recent releases with what instances and rollouts said of them.
pub async fn releases(store: &StoreArgs, limit: usize, json: bool) -> Result<String, CommandError> {
    let (store_location, config, aws) = store_of(store).await?;
    let cap = config
        .as_ref()
        .map_or(crate::config::DEFAULT_MAX_OBJECT_BYTES, |c| {
            c.max_object_bytes
        });
    let listed = crate::release::history::recent(aws.as_ref(), &store_location, limit, cap).await?;
    if json {
        let mut out = serde_json::to_string_pretty(&listed)
            .map_err(|e| CommandError::Output(e.to_string()))?;
        out.push('\n');
        return Ok(out);
    }
    Ok(crate::release::history::render(&listed))
}

/// `berth rollout`: the release across the group ([`crate::fleet`]); progress lines on
/// stderr, the summary as JSON on stdout, exit 1 when it went back.
pub async fn rollout(r: &crate::fleet::Rollout) -> Result<(), CommandError> {
    let aws = crate::aws::Aws::load(
        None,
        false,
        std::time::Duration::from_secs(60),
        r.bucket_owner.clone(),
    )
    .await;
    let say = |line: &str| eprintln!("rollout: {line}");
    let summary = crate::fleet::rollout(&aws, r, &say).await?;
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| CommandError::Output(e.to_string()))?;
    println!("{text}");
    if summary.ok() {
        return Ok(());
    }
    Err(CommandError::RolledBack {
        release: summary.release.clone(),
        outcome: summary.outcome,
        error: summary.error.clone().unwrap_or_default(),
    })
}

pub async fn down(
    args: &ProjectArgs,
    volumes: bool,
    progress: &Progress,
) -> Result<usize, CommandError> {
    let name = project_name(args)?;
    let engine = Engine::connect().await?;
    Ok(converge::down(&engine, &name, volumes, progress).await?)
}

pub async fn ps(args: &ProjectArgs, json: bool) -> Result<String, CommandError> {
    let name = project_name(args)?;
    let engine = Engine::connect().await?;
    let rows = converge::ps(&engine, &name).await?;
    if json {
        return serde_json::to_string_pretty(&rows)
            .map_err(|e| CommandError::Output(e.to_string()));
    }
    Ok(render_ps(&rows))
}

/// The table `berth ps` prints; health as Docker reports it, said so when it may lag.
fn render_ps(rows: &[PsRow]) -> String {
    let mut out = format!(
        "{:<32} {:<16} {:<24} {}\n",
        "NAME", "SERVICE", "STATUS", "PORTS"
    );
    for r in rows {
        let status = match (&r.health, r.state.as_str()) {
            (Some(h), s) => format!("{s} ({h})"),
            (None, "exited") => format!("exited ({})", r.exit_code.unwrap_or(-1)),
            (None, s) => s.to_string(),
        };
        out.push_str(&format!(
            "{:<32} {:<16} {:<24} {}\n",
            r.name,
            r.service,
            status,
            r.ports.join(", ")
        ));
    }
    if rows.iter().any(|r| r.health.as_deref() == Some("starting")) {
        // berth's own probe makes `up` return as soon as the health test passes; Docker's
        // status changes only at its own next check.
        out.push_str(
            "(health) is Docker's: `starting` until Docker's own next check, even after berth's probe passed and `up` returned\n",
        );
    }
    out
}

/// What a masked value reads as.
const MASK: &str = "********";

/// `berth verify-package`: which trusted key signed the package, or why none did.
pub fn verify_package(
    file: &std::path::Path,
    signature: Option<PathBuf>,
    keys: Vec<PathBuf>,
) -> Result<String, CommandError> {
    let signature = signature.unwrap_or_else(|| {
        let mut s = file.as_os_str().to_owned();
        s.push(".minisig");
        PathBuf::from(s)
    });
    let dirs = if keys.is_empty() {
        crate::signature::KEY_DIRS
            .iter()
            .map(PathBuf::from)
            .collect()
    } else {
        keys
    };
    let ok = crate::signature::verify(file, &signature, &dirs)?;
    Ok(format!(
        "{}: signed by the key in {} ({})",
        file.display(),
        ok.key.display(),
        ok.trusted_comment
    ))
}

/// `berth config`'s output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFormat {
    Yaml,
    Json,
}

/// `berth config`: the resolved project in compose's own shape (so that it can be diffed
/// against `docker compose config`), environment values masked, and so is every value a
/// `.env` file gave interpolation, in whatever field it landed (`command:`, labels...).
/// Secrets and configs show where they go, never their content.
pub fn config(args: &ProjectArgs, format: ConfigFormat) -> Result<String, CommandError> {
    let mut project = load(args)?;
    for svc in project.services.values_mut() {
        for v in svc.environment.values_mut() {
            *v = MASK.to_string();
        }
    }
    let mut tree = crate::compose::compose_shape(&project);
    mask_values(&mut tree, &project.env_file_values);
    // As compose: every `$` doubled, so that the output loads again to the same values.
    fn escape(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(escape),
            serde_json::Value::Object(map) => map.values_mut().for_each(escape),
            _ => {}
        }
    }
    escape(&mut tree);
    let encode = |e: String| CommandError::Output(e);
    Ok(match format {
        ConfigFormat::Json => {
            let mut out = serde_json::to_string_pretty(&tree).map_err(|e| encode(e.to_string()))?;
            out.push('\n');
            for w in &project.warnings {
                tracing::warn!("{w}");
            }
            out
        }
        ConfigFormat::Yaml => {
            let mut out = String::new();
            for w in &project.warnings {
                out.push_str(&format!("# warning: {w}\n"));
            }
            out.push_str(&serde_norway::to_string(&tree).map_err(|e| encode(e.to_string()))?);
            out
        }
    })
}

/// Replaces each of `secrets` wherever it appears in a string of `tree`. Values shorter than 4
/// characters are left: masking every `1` or `on` would garble the output, and they are no
/// secret worth the name.
fn mask_values(tree: &mut serde_json::Value, secrets: &[String]) {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| s.chars().count() >= 4)
        .collect();
    // Longest first: a secret that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    fn walk(v: &mut serde_json::Value, secrets: &[&str]) {
        match v {
            serde_json::Value::String(s) => {
                for secret in secrets {
                    if s.contains(secret) {
                        *s = s.replace(secret, MASK);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, secrets)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|i| walk(i, secrets)),
            _ => {}
        }
    }
    walk(tree, &secrets);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(health: Option<&str>) -> PsRow {
        PsRow {
            name: "p-web-1".into(),
            service: "web".into(),
            state: "running".into(),
            health: health.map(String::from),
            exit_code: None,
            image: "nginx".into(),
            ports: vec![],
        }
    }

    #[test]
    fn ps_says_whose_health_it_shows_when_docker_may_lag() {
        let starting = render_ps(&[row(Some("starting"))]);
        assert!(starting.contains("running (starting)"), "{starting}");
        assert!(starting.contains("is Docker's"), "{starting}");
        let healthy = render_ps(&[row(Some("healthy"))]);
        assert!(!healthy.contains("is Docker's"), "{healthy}");
    }
}
