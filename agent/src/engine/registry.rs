//! Registry credentials for pulls: which registry an image names, and how to authenticate to
//! it. ECR registries (by host name, or by the agent config) get an authorization token from
//! GetAuthorizationToken, cached until shortly before it expires; others use what the Docker
//! client config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) holds. Credential
//! helpers (`credsStore`, `credHelpers`) are programs berth does not run.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use crate::config::ecr_registry_id;
use crate::config::{RegistryAuth, RegistrySettings};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Docker config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("ECR authorization token for registry {registry} (account {registry_id}): {message}")]
    Ecr {
        registry: String,
        registry_id: String,
        message: String,
    },
}

/// Renew a cached token this long before it expires (tokens last 12 hours).
const TOKEN_MARGIN: Duration = Duration::from_secs(15 * 60);

/// Where each registry's credentials come from, with the ECR tokens fetched so far. Its
/// `Debug` names the registries holding a token, never the token.
#[derive(Default)]
pub struct Registries {
    settings: BTreeMap<String, RegistrySettings>,
    ecr: Option<aws_sdk_ecr::Client>,
    tokens: Mutex<HashMap<String, (DockerCredentials, SystemTime)>>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached: Vec<String> = self
            .tokens
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Registries")
            .field("settings", &self.settings)
            .field("ecr", &self.ecr.is_some())
            .field("tokens_cached_for", &cached)
            .finish()
    }
}

impl Registries {
    /// Docker-config credentials only (the plain `berth up`).
    pub fn docker_config() -> Registries {
        Registries::default()
    }

    pub fn new(
        settings: BTreeMap<String, RegistrySettings>,
        ecr: Option<aws_sdk_ecr::Client>,
    ) -> Registries {
        Registries {
            settings,
            ecr,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// How `registry` authenticates, and the ECR account id when it is ECR.
    fn auth_of(&self, registry: &str) -> (RegistryAuth, Option<String>) {
        match self.settings.get(registry) {
            Some(s) => (
                s.auth,
                s.registry_id.clone().or_else(|| ecr_registry_id(registry)),
            ),
            None => match ecr_registry_id(registry) {
                Some(id) if self.ecr.is_some() => (RegistryAuth::Ecr, Some(id)),
                _ => (RegistryAuth::DockerConfig, None),
            },
        }
    }

    /// Credentials for pulling `image`; None means anonymous.
    pub async fn credentials_for(
        &self,
        image: &str,
    ) -> Result<Option<DockerCredentials>, RegistryError> {
        let registry = registry_of(image).to_string();
        match self.auth_of(&registry) {
            (RegistryAuth::None, _) => Ok(None),
            (RegistryAuth::DockerConfig, _) => credentials_for(image),
            (RegistryAuth::Ecr, id) => {
                let registry_id = id.unwrap_or_default();
                self.ecr_token(&registry, &registry_id).await.map(Some)
            }
        }
    }

    async fn ecr_token(
        &self,
        registry: &str,
        registry_id: &str,
    ) -> Result<DockerCredentials, RegistryError> {
        if let Some((creds, expires)) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(registry_id)
        {
            if SystemTime::now() + TOKEN_MARGIN < *expires {
                return Ok(creds.clone());
            }
        }
        let err = |message: String| RegistryError::Ecr {
            registry: registry.to_string(),
            registry_id: registry_id.to_string(),
            message,
        };
        let Some(ecr) = &self.ecr else {
            return Err(err("no AWS configuration in a local run".into()));
        };
        #[allow(deprecated)] // registryIds still selects the account's token; no replacement exists
        let out = ecr
            .get_authorization_token()
            .registry_ids(registry_id)
            .send()
            .await
            .map_err(|e| err(crate::aws::describe(&e)))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| err("no authorization data in the answer".into()))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| err("no token in the answer".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .map_err(|_| err("the token is not base64".into()))?;
        let decoded = String::from_utf8_lossy(&decoded).to_string();
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| err("the token is not user:password".into()))?;
        let expires = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        let creds = DockerCredentials {
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        };
        tracing::info!(%registry, registry_id, "fetched an ECR authorization token");
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(registry_id.to_string(), (creds.clone(), expires));
        Ok(creds)
    }
}

pub use crate::config::registry_of;

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
    fn debug_names_the_registry_but_never_its_token() {
        let registries = Registries::default();
        let host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
        registries.tokens.lock().unwrap().insert(
            host.to_string(),
            (
                DockerCredentials {
                    username: Some("AWS".into()),
                    password: Some("eyJ-secret-token-value".into()),
                    serveraddress: Some(host.into()),
                    ..DockerCredentials::default()
                },
                SystemTime::now(),
            ),
        );
        let shown = format!("{registries:?}");
        assert!(shown.contains(host), "{shown}");
        assert!(!shown.contains("eyJ-secret-token-value"), "{shown}");
    }

    #[test]
    fn ecr_hosts_name_their_account() {
        assert_eq!(
            ecr_registry_id("123456789012.dkr.ecr.ap-northeast-2.amazonaws.com").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            ecr_registry_id("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("123456789012")
        );
        assert_eq!(ecr_registry_id("127.0.0.1:5000"), None);
        assert_eq!(
            ecr_registry_id("12345.dkr.ecr.us-east-1.amazonaws.com"),
            None
        );
        assert_eq!(ecr_registry_id("123456789012.dkr.example.com"), None);
    }

    #[test]
    fn configured_auth_wins_and_ecr_hosts_need_an_aws_client() {
        let settings = BTreeMap::from([(
            "127.0.0.1:5000".to_string(),
            RegistrySettings {
                auth: RegistryAuth::Ecr,
                registry_id: Some("123456789012".into()),
            },
        )]);
        let r = Registries::new(settings, None);
        assert_eq!(
            r.auth_of("127.0.0.1:5000"),
            (RegistryAuth::Ecr, Some("123456789012".into()))
        );
        // Without AWS (a local run), an ECR host falls back to the Docker config.
        assert_eq!(
            r.auth_of("123456789012.dkr.ecr.us-east-1.amazonaws.com").0,
            RegistryAuth::DockerConfig
        );
        assert_eq!(r.auth_of("ghcr.io").0, RegistryAuth::DockerConfig);
    }

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
