//! Where a fetched release goes on the host. The project directory, what relative paths in
//! the compose file resolve against (`./pgdata:/var/lib/postgresql/data`), is on disk under
//! the state directory, so that an app's data outlives a reboot: it holds the compose file
//! and, for each env file, a link to it. The env files themselves, which hold secrets, are
//! under the run directory (a tmpfs under systemd), 0600. A bind into either directory of
//! berth's own is refused (the host policy judges it, with what [`host`] says of this
//! host), but into the project directory's own subdirectories, which are the app's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::files::{private_dir, write_private};
use super::ReleaseError;
use crate::config::AgentConfig;
use crate::policy::Host;

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

/// The host as the policy sees this agent's project, whose compose file is `compose_file`:
/// the project directory (the compose file's), the files berth writes there when it is
/// berth's own (the compose file, the env files' links: every file at its top, as the app's
/// data lives in its subdirectories; a local compose file's directory is the user's), and
/// berth's own directories.
pub fn host(config: &AgentConfig, compose_file: &Path) -> Host {
    let dir = compose_file
        .parent()
        .map_or_else(|| project_dir(config), Path::to_path_buf);
    let listed = if dir == project_dir(config) {
        std::fs::read_dir(&dir).ok()
    } else {
        None
    };
    let own_files: Vec<PathBuf> = listed
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink() || t.is_file()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    Host {
        project_dir: dir,
        own_files,
        run_dir: config.run_dir.clone(),
        state_dir: config.state_dir.clone(),
        compose_location: (!config.compose.is_local()).then(|| config.compose.to_string()),
        origin: policy_origin(config),
    }
}

/// Where the agent's policy comes from, as refusals name it.
pub fn policy_origin(config: &AgentConfig) -> String {
    format!("[policy] of {}", config.path.display())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compose::Project;

    fn check_binds(p: &Project, c: &AgentConfig) -> Result<(), crate::policy::PolicyError> {
        let mut policy = c.policy.clone();
        policy.bind_prefixes = vec![PathBuf::from("/srv")];
        let compose = project_dir(c).join("compose.yaml");
        crate::policy::check(p, &policy, &host(c, &compose)).map(|_| ())
    }

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
            (PathBuf::from("/srv/../etc"), "/etc, the host's own"),
            (PathBuf::from("/var/run/docker.sock"), "the host's own"),
            (PathBuf::from("/home/x"), "outside the project directory"),
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
                e.contains("services.db.volumes: the bind of") && e.contains(why),
                "{}: {e}",
                source.display()
            );
        }
    }
}
