//! Registry credentials for pulls: which registry an image names, and the credentials the
//! Docker client config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) holds for
//! it. Credential helpers (`credsStore`, `credHelpers`) are programs berth does not run; a
//! registry that needs one is pulled anonymously, with a warning.

use std::path::PathBuf;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Docker config {path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// The registry host an image reference names (`docker.io` when it names none).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

#[derive(Debug, Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::HashMap<String, AuthEntry>,
}

#[derive(Debug, Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for the registry `image` names, from the Docker config; None when there are none.
pub fn credentials_for(image: &str) -> Result<Option<DockerCredentials>, RegistryError> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Config {
                path,
                message: e.to_string(),
            })
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| RegistryError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let registry = registry_of(image);
    let entry = config.auths.iter().find(|(key, _)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        host == registry || (registry == "docker.io" && host == "index.docker.io")
    });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    let (username, password) = match (&entry.auth, &entry.username, &entry.password) {
        (Some(auth), _, _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| RegistryError::Config {
                    path: path.clone(),
                    message: format!("auths.{key}.auth is not base64"),
                })?;
            let decoded = String::from_utf8_lossy(&decoded).to_string();
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| RegistryError::Config {
                    path: path.clone(),
                    message: format!("auths.{key}.auth is not user:password"),
                })?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        (None, u, p) => (u.clone(), p.clone()),
    };
    Ok(Some(DockerCredentials {
        username,
        password,
        identitytoken: entry.identitytoken.clone(),
        serveraddress: Some(registry.to_string()),
        ..Default::default()
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_is_the_first_component_when_it_looks_like_a_host() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/web:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/web"), "localhost");
        assert_eq!(
            registry_of("123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/api:v1"),
            "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com"
        );
    }
}
