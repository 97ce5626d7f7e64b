#![allow(clippy::unwrap_used)]

use super::*;

/// A project from `yaml` in a directory of its own, with the host around it: berth's
/// directories under the same temporary directory.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn project_dir(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    fn host(&self) -> Host {
        Host {
            project_dir: self.project_dir(),
            own_files: vec![self.project_dir().join("compose.yaml")],
            run_dir: self.dir.path().join("run"),
            state_dir: self.dir.path().join("state"),
            compose_location: Some("s3://cfg/api/compose.yaml".into()),
            origin: "[policy] of test.toml".into(),
        }
    }

    /// Loaded as the agent loads it: the policy's gate asked before a host file is read.
    fn load(
        &self,
        yaml: &str,
        policy: &PolicySettings,
    ) -> Result<Project, crate::compose::ComposeError> {
        let dir = self.project_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("compose.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut remote = crate::compose::RemoteSources::default();
        for loc in [
            "s3://cfg/api/db.pw",
            "s3://other/x.pw",
            "ssm:/api/token",
            "ssm:/prod/db",
            "ssm:/production/db",
        ] {
            remote.0.insert(loc.into(), b"x".to_vec());
        }
        crate::compose::load(&crate::compose::LoadOptions {
            files: vec![file],
            project_name: Some("api".into()),
            working_dir: dir,
            remote_sources: remote,
            read_gate: read_gate(policy, &self.host()),
            ..Default::default()
        })
    }

    /// The warnings, or every refusal as (field, text): the gate's (a host file refused
    /// before it is read) or the check's.
    fn judge(
        &self,
        yaml: &str,
        policy: &PolicySettings,
    ) -> Result<Vec<String>, Vec<(String, String)>> {
        match self.load(yaml, policy) {
            Ok(project) => check(&project, policy, &self.host()).map_err(|e| {
                let text = e.to_string();
                assert!(
                    text.starts_with("the host policy ([policy] of test.toml) refuses"),
                    "{text}"
                );
                e.refusals
                    .into_iter()
                    .map(|r| (r.field.clone(), r.to_string()))
                    .collect()
            }),
            Err(crate::compose::ComposeError::Refused { field, message }) => {
                assert!(
                    message.ends_with("by the host policy ([policy] of test.toml)"),
                    "{message}"
                );
                Err(vec![(field, message)])
            }
            Err(e) => panic!("{yaml}: {e}"),
        }
    }

    /// The one refusal `yaml` draws under the default policy: its field and its text.
    fn refused(&self, yaml: &str) -> (String, String) {
        let e = self.judge(yaml, &PolicySettings::default()).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }
}

fn service(body: &str) -> String {
    format!("services:\n  web:\n    image: web:1\n{body}")
}

#[test]
fn a_plain_service_passes_the_default_policy_with_a_warning_about_registries() {
    let c = Case::new();
    let yaml = service(
        "    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE, cap_chown]\n    security_opt: [\"no-new-privileges:true\"]\n    volumes: [\"./data:/data\", \"cache:/cache\"]\n    tmpfs: [/tmp]\nvolumes:\n  cache: {}\n",
    );
    let warnings = c.judge(&yaml, &PolicySettings::default()).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // Masking a file with the null device is no reach into the host; reading it is.
    let masked = service("    volumes: [\"/dev/null:/app/local.conf\"]\n");
    let warnings = c.judge(&masked, &PolicySettings::default()).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("names no `registries`"),
        "{warnings:?}"
    );
}

#[test]
fn every_escalation_is_refused_by_default_naming_field_and_key() {
    let c = Case::new();
    let cases: Vec<(String, &str, &str)> = vec![
        (service("    privileged: true\n"), "services.web.privileged", "`privileged = true`"),
        (service("    cap_add: [ALL]\n"), "services.web.cap_add", "`cap_add = [\"ALL\"]`"),
        (service("    cap_add: [CAP_SYS_ADMIN]\n"), "services.web.cap_add", "`cap_add = [\"SYS_ADMIN\"]`"),
        (service("    security_opt: [\"seccomp:unconfined\"]\n"), "services.web.security_opt", "`security_opt = [\"seccomp:unconfined\"]`"),
        (service("    security_opt: [\"apparmor=unconfined\"]\n"), "services.web.security_opt", "security_opt"),
        (service("    security_opt: [\"label:disable\"]\n"), "services.web.security_opt", "security_opt"),
        (service("    sysctls: {net.ipv4.ip_forward: 1}\n"), "services.web.sysctls", "`sysctls = [\"net.ipv4.ip_forward\"]`"),
        (service("    gpus: all\n"), "services.web.deploy.resources.reservations.devices", "`devices = true`"),
        (service("    volumes: [\"/:/host\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/etc:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/proc/1:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/dev/sda:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/sys:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/var:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes: [\"/srv/data:/h\"]\n"), "services.web.volumes", "`bind_prefixes = [\"/srv/data\"]`"),
        (service("    volumes: [\"./data/../../../..:/h\"]\n"), "services.web.volumes", "no policy allows it"),
        (service("    volumes:\n      - {type: bind, source: ./data, target: /d, bind: {propagation: rshared}}\n"), "services.web.volumes", "`bind_propagation = true`"),
        (service("    networks: [hostnet]\nnetworks:\n  hostnet: {external: true, name: host}\n"), "services.web.networks", "`host_network = true`"),
        (service("    volumes: [\"root:/h\"]\nvolumes:\n  root: {driver_opts: {type: none, o: bind, device: /}}\n"), "volumes.root.driver_opts", "`bind_volumes = true`"),
        (service("    env_file: [/etc/shadow]\n"), "services.web.env_file", "no policy allows it"),
        (service("    secrets: [pw]\nsecrets:\n  pw: {file: /etc/ssh/ssh_host_ed25519_key}\n"), "secrets.pw.file", "no policy allows it"),
        (service("    configs: [c]\nconfigs:\n  c: {file: /home/ops/.aws/credentials}\n"), "configs.c.file", "`bind_prefixes = [\"/home/ops/.aws\"]`"),
        (service("    env_file: [/nonexistent/app.env]\n"), "services.web.env_file", "`bind_prefixes = [\"/nonexistent\"]`"),
        (service("    secrets: [pw]\nsecrets:\n  pw: {file: \"s3://other/x.pw\"}\n"), "secrets.pw.file", "`sources = [\"s3://other/\"]`"),
        (service("    secrets: [pw]\nsecrets:\n  pw: {file: \"ssm:/prod/db\"}\n"), "secrets.pw.file", "`sources = [\"ssm:/prod/\"]`"),
    ];
    for (yaml, field, allow) in cases {
        let (f, text) = c.refused(&yaml);
        assert_eq!(f, field, "{yaml}\n{text}");
        assert!(text.contains(allow), "{yaml}\n{text}");
    }
}

#[test]
fn each_key_allows_what_it_names_and_no_more() {
    let c = Case::new();
    let policy = PolicySettings {
        privileged: true,
        cap_add: vec!["net_admin".into()],
        security_opt: vec!["seccomp=unconfined".into()],
        sysctls: vec!["net.core.*".into()],
        bind_prefixes: vec![PathBuf::from("/srv/data")],
        bind_propagation: true,
        bind_volumes: true,
        devices: true,
        host_network: true,
        sources: vec!["ssm:/prod/".into()],
        registries: Some(vec![
            "docker.io".into(),
            "*.dkr.ecr.us-east-1.amazonaws.com".into(),
        ]),
    };
    let yaml = "services:\n  web:\n    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/web@sha256:0000000000000000000000000000000000000000000000000000000000000000\n    privileged: true\n    cap_add: [CAP_NET_ADMIN]\n    security_opt: [\"seccomp:unconfined\"]\n    sysctls: {net.core.somaxconn: 1024}\n    gpus: all\n    volumes:\n      - /srv/data/web:/data\n      - {type: bind, source: /srv/data/m, target: /m, bind: {propagation: rshared}}\n      - vol:/v\n    networks: [hostnet]\n    secrets: [a, b]\n  db:\n    image: postgres:16\nnetworks:\n  hostnet: {external: true, name: host}\nvolumes:\n  vol: {driver_opts: {type: none, o: bind, device: /srv/data/vol}}\nsecrets:\n  a: {file: \"ssm:/prod/db\"}\n  b: {file: \"s3://cfg/api/db.pw\"}\n";
    assert_eq!(c.judge(yaml, &policy).unwrap(), Vec::<String>::new());
    // One step past each allowance is refused again.
    let beyond = [
        ("CAP_NET_ADMIN", "SYS_ADMIN", "cap_add"),
        ("seccomp:unconfined", "apparmor:unconfined", "security_opt"),
        ("net.core.somaxconn", "kernel.shmmax", "sysctls"),
        ("/srv/data/web", "/srv/other", "volumes"),
        ("device: /srv/data/vol", "device: /etc", "driver_opts"),
        ("ssm:/prod/db", "ssm:/production/db", "secrets.a.file"),
        ("postgres:16", "ghcr.io/x/postgres:16", "services.db.image"),
        (
            "us-east-1.amazonaws.com/web",
            "us-east-1.amazonaws.com.evil.io/web",
            "services.web.image",
        ),
    ];
    for (from, to, field) in beyond {
        let changed = yaml.replace(from, to);
        assert_ne!(changed, yaml, "{from}");
        let e = c.judge(&changed, &policy).unwrap_err();
        assert!(e.iter().any(|(f, _)| f.ends_with(field)), "{to}: {e:?}");
    }
}

#[test]
fn paths_are_judged_as_written_and_as_the_host_resolves_them() {
    let c = Case::new();
    let data = c.project_dir().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A link an app left in its own data directory, read by a later release as an env file,
    // reaches what the link names.
    std::os::unix::fs::symlink("/etc/hostname", data.join("leak")).unwrap();
    let (_, r) = c.refused(&service("    env_file: [./data/leak]\n"));
    assert!(r.contains("/etc, the host's own"), "{r}");
    // berth's own files in the project directory are read (the env files' links) but never
    // bound, and the project directory itself is not bound either.
    let (_, r) = c.refused(&service("    volumes: [\"./compose.yaml:/c\"]\n"));
    assert!(r.contains("project directory's own files"), "{r}");
    let (_, r) = c.refused(&service("    volumes: [\".:/c\"]\n"));
    assert!(r.contains("project directory's own files"), "{r}");
    let (_, r) = c.refused(&service(&format!(
        "    volumes: [\"{}:/c\"]\n",
        c.dir.path().join("run/api").display()
    )));
    assert!(r.contains("run directory"), "{r}");
    let (_, r) = c.refused(&service(&format!(
        "    volumes: [\"{}:/c\"]\n",
        c.dir.path().display()
    )));
    assert!(r.contains("holding berth's own"), "{r}");
}

#[test]
fn a_policy_file_is_read_for_its_policy_table_alone_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(
        &file,
        "project = \"x\"\n[policy]\ncap_add = [\"NET_ADMIN\"]\n",
    )
    .unwrap();
    let p = PolicySettings::load(&file).unwrap();
    assert_eq!(p.cap_add, vec!["NET_ADMIN".to_string()]);
    std::fs::write(&file, "").unwrap();
    assert_eq!(
        PolicySettings::load(&file).unwrap(),
        PolicySettings::default()
    );
    for (text, key) in [
        (
            "[policy]\nbind_prefixes = [\"/\"]\n",
            "policy.bind_prefixes[0]",
        ),
        (
            "[policy]\nbind_prefixes = [\"/var\"]\n",
            "policy.bind_prefixes[0]",
        ),
        (
            "[policy]\nbind_prefixes = [\"/etc/app\"]\n",
            "policy.bind_prefixes[0]",
        ),
        (
            "[policy]\nbind_prefixes = [\"srv\"]\n",
            "policy.bind_prefixes[0]",
        ),
        ("[policy]\nsources = [\"https://x\"]\n", "policy.sources[0]"),
        ("[policy]\nsysctls = [\"*\"]\n", "policy.sysctls[0]"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = PolicySettings::load(&file).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    std::fs::write(&file, "[policy]\nprivileged = \"yes\"\n").unwrap();
    assert!(PolicySettings::load(&file).is_err());
    std::fs::write(&file, "[policy]\nallow_everything = true\n").unwrap();
    let e = PolicySettings::load(&file).unwrap_err().to_string();
    assert!(e.contains("allow_everything"), "{e}");
}
