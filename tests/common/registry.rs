//! A private registry for the tests: Debian's `docker-registry` (the CNCF distribution registry)
//! on 127.0.0.1 with htpasswd basic auth, each on its own port with its own storage, stopped when
//! dropped. By default its htpasswd holds the user `AWS` with moto's ECR token password, so the
//! same registry stands in for ECR.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};

use base64::Engine as _;

use super::{docker, docker_try, free_port};

/// The user of ECR's tokens.
pub const USER: &str = "AWS";
/// The password of moto's ECR tokens (`<account>-auth-token`).
pub const PASSWORD: &str = "123456789012-auth-token";

/// A running registry, stopped (and its storage removed) when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`
    pub addr: String,
    /// The password its htpasswd holds for [`USER`].
    pub password: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// A registry accepting `AWS` / moto's ECR token password.
    pub fn start() -> Registry {
        Registry::start_with_password(PASSWORD)
    }

    /// A registry whose htpasswd holds `AWS` / `password`.
    pub fn start_with_password(password: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, password])
            .output()
            .unwrap();
        assert!(
            htpasswd.status.success(),
            "htpasswd failed (apache2-utils installed?)"
        );
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = Registry {
            child,
            addr,
            password: password.to_string(),
            _dir: dir,
        };
        let addr = registry.addr.clone();
        crate::assert_eventually!(10, "the registry answers", || {
            std::net::TcpStream::connect(&addr)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        registry
    }

    /// Pushes a local image under `repo:tag` in this registry; returns the full reference,
    /// removed again from the local image store so that only a pull can bring it back.
    pub fn push(&self, local: &str, repo: &str, tag: &str) -> String {
        let config = docker_config(&self.addr, USER, &self.password);
        let reference = format!("{}/{repo}:{tag}", self.addr);
        let cfg = config.path().to_str().unwrap().to_string();
        // The registry may accept connections a moment before it answers logins.
        let login = [
            "--config",
            &cfg,
            "login",
            &self.addr,
            "-u",
            USER,
            "-p",
            &self.password,
        ];
        crate::assert_eventually!(20, "docker login to the test registry", || {
            let out = docker_try(&login);
            if out.code == 0 {
                Ok(())
            } else {
                Err(out.stderr)
            }
        });
        docker(&["tag", local, &reference]);
        docker(&["--config", &cfg, "push", &reference]);
        docker(&["rmi", &reference]);
        reference
    }
}

impl Registry {
    /// Deletes `repo@digest` from the registry, as an ECR lifecycle policy expires an image:
    /// its manifest is gone, a pull or a look by that digest finds nothing.
    pub fn delete(&self, repo: &str, digest: &str) {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{}", self.password));
        let (status, body) = super::aws::http_with_headers(
            "DELETE",
            &format!("http://{}/v2/{repo}/manifests/{digest}", self.addr),
            &[("Authorization", &format!("Basic {auth}"))],
            None,
        );
        assert_eq!(status, 202, "DELETE {repo}@{digest}: {body}");
    }
}

/// A Docker client config directory holding credentials for one registry.
pub fn docker_config(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#);
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    dir
}

/// Whether the local image store holds `reference`.
pub fn image_present(reference: &str) -> bool {
    docker_try(&["image", "inspect", reference]).code == 0
}

/// Removes a test's image tag when the test ends, however it ends.
#[derive(Debug)]
pub struct RemoveImage(pub String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .env_remove("DOCKER_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
