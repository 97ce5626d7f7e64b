//! Where a fetched release goes on the host. The project directory, what relative paths in
//! the compose file resolve against (`./pgdata:/var/lib/postgresql/data`), is on disk under
//! the state directory, so that an app's data outlives a reboot: it holds the compose file
//! and, for each env file, a link to it. The env files themselves, which hold secrets, are
//! under the run directory (a tmpfs under systemd), 0600. A bind into either directory of
//! berth's own is refused (see [`check_binds`]), but into the project directory's own
//! subdirectories, which are the app's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::files::{private_dir, write_private};
use super::ReleaseError;
use crate::compose::{MountKind, Project};
use crate::config::AgentConfig;

/// The project directory on disk: `<state_dir>/projects/<project>`.
pub fn project_dir(config: &AgentConfig) -> PathBuf {
    config.state_dir.join("projects").join(&config.project)
}

/// The env files' directory on tmpfs: `<run_dir>/<project>`.
pub fn secrets_dir(config: &AgentConfig) -> PathBuf {
    config.run_dir.join(&config.project)
}

/// Writes a release's files: the compose file into the project directory, each env file into
/// the secrets directory with a link to it from the project directory. Links a previous
/// release left for env files this one does not have are removed, with their files. Returns
/// the compose file's path.
pub fn materialize(
    config: &AgentConfig,
    compose: (&str, &[u8]),
    env_files: &[(String, Vec<u8>)],
) -> Result<PathBuf, ReleaseError> {
    let project = project_dir(config);
    let secrets = secrets_dir(config);
    private_dir(&project)?;
    private_dir(&secrets)?;
    warn_of_earlier_data(&secrets, &project);
    let compose_file = project.join(compose.0);
    write_private(&compose_file, compose.1)?;
    let mut linked = BTreeSet::new();
    for (name, bytes) in env_files {
        let target = secrets.join(name);
        write_private(&target, bytes)?;
        link(&project.join(name), &target)?;
        linked.insert(name.clone());
    }
    forget_other_links(&project, &secrets, &linked);
    Ok(compose_file)
}

/// An earlier berth kept the project directory on the run directory: relative binds' data
/// left there (directories) is lost at the next reboot, and services are now recreated onto
/// the project directory on disk. Said, for an operator to copy it over; nothing is moved.
fn warn_of_earlier_data(secrets: &Path, project: &Path) {
    let Ok(entries) = std::fs::read_dir(secrets) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !project.join(entry.file_name()).exists()
        {
            tracing::warn!(found = %entry.path().display(), project_dir = %project.display(), "data an earlier berth kept on the run directory (a relative bind's): copy it into the project directory, where the services now bind it from");
        }
    }
}

/// `at` -> `target`, replacing whatever is at `at` in one step.
fn link(at: &Path, target: &Path) -> Result<(), ReleaseError> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = at.with_extension("berth-link");
    let werr = |source| ReleaseError::Write {
        path: at.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(werr)?;
    std::fs::rename(&tmp, at).map_err(werr)
}

/// Removes the links into `secrets` that are not in `keep`, and what they point at.
fn forget_other_links(project: &Path, secrets: &Path, keep: &BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(project) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if target.starts_with(secrets) && !keep.contains(&name) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&target);
        }
    }
}

/// A bind of the project that reaches into berth's own directories, and why it may not.
#[derive(Debug, thiserror::Error)]
#[error("services.{service}: the bind of {source_path} reaches into {why}; bind a directory of its own under the project directory ({project_dir}) instead")]
pub struct BindRefused {
    pub service: String,
    pub source_path: String,
    pub why: &'static str,
    pub project_dir: String,
}

/// Refuses binds into the run directory (secrets, sockets), into the state directory outside
/// the project directory (marks, manifests, other projects), and of the project directory
/// itself or the files berth writes there (the compose file, the env files' links): a
/// container may keep data under the project directory, never read or change berth's own
/// files. Local bind volumes (`driver_opts: {o: bind, device: ...}`) are held to the same.
pub fn check_binds(project: &Project, config: &AgentConfig) -> Result<(), BindRefused> {
    let dir = project_dir(config);
    let own_files: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink() || t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    // Judged as written (`..` folded) and as the host resolves it (links followed as far as
    // the path exists: /var/run is /run, a link an app left under its data directory): both
    // must pass.
    let as_written = Guard {
        run: normalize(&config.run_dir),
        state: normalize(&config.state_dir),
        project: normalize(&dir),
        own: own_files.iter().map(|p| normalize(p)).collect(),
    };
    let as_resolved = Guard {
        run: resolve(&config.run_dir),
        state: resolve(&config.state_dir),
        project: resolve(&dir),
        own: own_files.iter().map(|p| resolve(p)).collect(),
    };
    let judge = |source: &Path| -> Option<&'static str> {
        as_written
            .judge(&normalize(source))
            .or_else(|| as_resolved.judge(&resolve(source)))
    };
    let refused = |service: &str, source: &str, why| BindRefused {
        service: service.to_string(),
        source_path: source.to_string(),
        why,
        project_dir: dir.display().to_string(),
    };
    for svc in project.services.values() {
        for m in &svc.mounts {
            let (MountKind::Bind, Some(source)) = (&m.kind, &m.source) else {
                continue;
            };
            if let Some(why) = judge(Path::new(source)) {
                return Err(refused(&svc.name, source, why));
            }
        }
    }
    for (key, volume) in &project.volumes {
        let is_bind = volume.driver_opts.get("o").is_some_and(|o| {
            o.split(',')
                .any(|opt| matches!(opt.trim(), "bind" | "rbind"))
        });
        if let (true, Some(device)) = (is_bind, volume.driver_opts.get("device")) {
            if let Some(why) = judge(Path::new(device)) {
                return Err(refused(&format!("(volume {key})"), device, why));
            }
        }
    }
    Ok(())
}

/// berth's own directories, and the files berth writes in the project directory.
struct Guard {
    run: PathBuf,
    state: PathBuf,
    project: PathBuf,
    own: BTreeSet<PathBuf>,
}

impl Guard {
    /// Why a bind of `source` may not be, if it may not.
    fn judge(&self, source: &Path) -> Option<&'static str> {
        if source.starts_with(&self.run) {
            return Some("berth's run directory, which holds the release's secrets");
        }
        if *source == self.project || self.own.contains(source) {
            return Some("the project directory's own files (the compose file, the env files)");
        }
        if source.starts_with(&self.state) && !source.starts_with(&self.project) {
            return Some("berth's state directory, outside the project's own");
        }
        if self.state.starts_with(source) || self.run.starts_with(source) {
            return Some("a directory holding berth's own");
        }
        None
    }
}

/// The path as the host resolves it: its longest existing ancestor with links followed, then
/// the rest as written (`..` folded).
fn resolve(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalize(&out);
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path,
        }
    }
}

/// `..` and `.` folded away, without touching the file system (a source may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AgentConfig {
        let text = format!(
            "project = \"api\"\ncompose = \"s3://b/api/compose.yaml\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\n",
            dir.join("run").display(),
            dir.join("state").display()
        );
        AgentConfig::parse(&dir.join("berth.toml"), &text).unwrap()
    }

    #[test]
    fn the_compose_file_is_on_disk_and_env_files_on_the_run_directory_behind_links() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let compose = materialize(
            &c,
            ("compose.yaml", b"services: {}\n"),
            &[
                ("app.env".into(), b"A=1\n".to_vec()),
                ("old.env".into(), b"B=2\n".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(compose, tmp.path().join("state/projects/api/compose.yaml"));
        let link = tmp.path().join("state/projects/api/app.env");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            tmp.path().join("run/api/app.env")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"A=1\n");
        let mode = std::fs::metadata(tmp.path().join("run/api/app.env"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The next release has no old.env: its link and its file go.
        materialize(
            &c,
            ("compose.yaml", b"x"),
            &[("app.env".into(), b"A=2\n".to_vec())],
        )
        .unwrap();
        assert!(std::fs::symlink_metadata(tmp.path().join("state/projects/api/old.env")).is_err());
        assert!(!tmp.path().join("run/api/old.env").exists());
        assert_eq!(std::fs::read(&link).unwrap(), b"A=2\n");
    }

    fn project_with_bind(source: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(
            &file,
            format!("services:\n  db:\n    image: x\n    volumes: [\"{source}:/data\"]\n"),
        )
        .unwrap();
        crate::compose::load(&crate::compose::LoadOptions {
            files: vec![file],
            project_name: Some("api".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn binds_into_berths_own_directories_are_refused_and_data_directories_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        materialize(
            &c,
            ("compose.yaml", b"x"),
            &[("app.env".into(), b"A=1\n".to_vec())],
        )
        .unwrap();
        let state = tmp.path().join("state");
        let ok = [
            state.join("projects/api/pgdata"),
            state.join("projects/api/data/sub"),
            PathBuf::from("/srv/data"),
        ];
        for source in ok {
            let p = project_with_bind(&source.display().to_string());
            assert!(check_binds(&p, &c).is_ok(), "{}", source.display());
        }
        let refused = [
            (tmp.path().join("run/api/app.env"), "run directory"),
            (tmp.path().join("run"), "run directory"),
            (state.join("projects/api"), "project directory's own files"),
            (
                state.join("projects/api/app.env"),
                "project directory's own files",
            ),
            (
                state.join("projects/api/compose.yaml"),
                "project directory's own files",
            ),
            (state.join("projects/other/data"), "state directory"),
            (state.join("releases"), "state directory"),
            (
                state.join("projects/api/pgdata/../../other"),
                "state directory",
            ),
            (tmp.path().to_path_buf(), "holding berth's own"),
        ];
        // Through links: a link to the run directory (as /var/run is /run), and one an app
        // left in its own data directory.
        let via = tmp.path().join("via");
        std::os::unix::fs::symlink(tmp.path().join("run"), &via).unwrap();
        std::fs::create_dir_all(state.join("projects/api/data")).unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("run/api"),
            state.join("projects/api/data/x"),
        )
        .unwrap();
        let refused = refused.into_iter().chain([
            (via.join("api/app.env"), "run directory"),
            (state.join("projects/api/data/x/app.env"), "run directory"),
        ]);
        for (source, why) in refused {
            let p = project_with_bind(&source.display().to_string());
            let e = check_binds(&p, &c).unwrap_err().to_string();
            assert!(
                e.starts_with("services.db: the bind of") && e.contains(why),
                "{}: {e}",
                source.display()
            );
        }
    }
}
