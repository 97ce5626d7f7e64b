//! Who this instance is, from the instance metadata service through aws-config's IMDS client:
//! IMDSv2 only (the client always fetches a session token first; it never falls back to v1),
//! retried with backoff. The endpoint comes from the standard `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::time::{Duration, Instant};

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("instance metadata {path} at {endpoint}: {message}")]
    Imds {
        endpoint: String,
        path: String,
        message: String,
    },
    #[error("instance metadata at {endpoint} did not answer within {secs}s")]
    Unreachable {
        endpoint: String,
        secs: u64,
        source: Box<IdentityError>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    /// `autoscaling/target-lifecycle-state`.
    pub lifecycle_state: Option<LifecycleState>,
    /// The instance's AutoScaling group, from the `aws:autoscaling:groupName` tag (needs
    /// instance metadata tags on); the config's `lifecycle.group` wins.
    pub group: Option<String>,
    /// The instance's account (the identity document's `accountId`): the owner every bucket
    /// berth reads must have, unless `bucket_owner` says otherwise.
    pub account: Option<String>,
}

impl Identity {
    /// A laptop's identity: no instance, no AutoScaling.
    pub fn local() -> Identity {
        Identity {
            instance_id: "local".into(),
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "local".into()),
            availability_zone: "local".into(),
            lifecycle_state: None,
            group: None,
            account: None,
        }
    }

    pub fn is_warm_pool(&self) -> bool {
        matches!(self.lifecycle_state, Some(LifecycleState::Warmed(_)))
    }
}

/// Where AutoScaling wants this instance (IMDS `autoscaling/target-lifecycle-state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum LifecycleState {
    InService,
    /// In a warm pool: `Warmed:Stopped`, `Warmed:Running`, `Warmed:Hibernated` (the part after
    /// the colon).
    Warmed(String),
    /// Being scaled in: `Terminated`, or a `Terminating:*` state.
    Leaving(String),
    /// A state this version does not act on, as IMDS spelled it.
    Other(String),
}

impl LifecycleState {
    pub fn parse(text: &str) -> LifecycleState {
        match text {
            "InService" => LifecycleState::InService,
            t if t == "Terminated" || t.starts_with("Terminating") => {
                LifecycleState::Leaving(t.to_string())
            }
            t => match t.strip_prefix("Warmed:") {
                Some(how) => LifecycleState::Warmed(how.to_string()),
                None => LifecycleState::Other(t.to_string()),
            },
        }
    }
}

impl std::fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LifecycleState::InService => f.write_str("InService"),
            LifecycleState::Warmed(how) => write!(f, "Warmed:{how}"),
            LifecycleState::Leaving(s) | LifecycleState::Other(s) => f.write_str(s),
        }
    }
}

impl From<LifecycleState> for String {
    fn from(s: LifecycleState) -> String {
        s.to_string()
    }
}

#[derive(Debug, Clone)]
pub struct Imds {
    client: Client,
    endpoint: String,
}

fn endpoint() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or_else(|_| "http://169.254.169.254".into())
}

fn is_not_found(e: &ImdsError) -> bool {
    matches!(e, ImdsError::ErrorResponse(r) if r.response().status().as_u16() == 404)
}

/// The client's own Display of an error response carries a Debug dump of the response, and
/// its other errors hide the cause (connection refused, timeout) in their sources: one line,
/// the status or the causes.
fn message(e: &ImdsError) -> String {
    match e {
        ImdsError::ErrorResponse(r) => format!("HTTP {}", r.response().status().as_u16()),
        other => crate::report::chain(other),
    }
}

impl Imds {
    pub fn new() -> Imds {
        let client = Client::builder()
            .max_attempts(4)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .token_ttl(Duration::from_secs(21_600))
            .build();
        Imds {
            client,
            endpoint: endpoint(),
        }
    }

    /// One metadata value; None when IMDS says 404 (the path does not apply here).
    pub async fn optional(&self, path: &str) -> Result<Option<String>, IdentityError> {
        match self.client.get(path).await {
            Ok(v) => Ok(Some(v.as_ref().trim().to_string())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(IdentityError::Imds {
                endpoint: self.endpoint.clone(),
                path: path.into(),
                message: message(&e),
            }),
        }
    }

    pub async fn required(&self, path: &str) -> Result<String, IdentityError> {
        self.optional(path)
            .await?
            .ok_or_else(|| IdentityError::Imds {
                endpoint: self.endpoint.clone(),
                path: path.into(),
                message: "not found (HTTP 404)".into(),
            })
    }

    /// The identity, retrying until `timeout` while IMDS does not answer (it can lag at boot).
    pub async fn identity(&self, timeout: Duration) -> Result<Identity, IdentityError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.read_identity().await {
                Ok(id) => return Ok(id),
                Err(e) if Instant::now() + delay >= deadline => {
                    return Err(IdentityError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        secs: timeout.as_secs(),
                        source: Box::new(e),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %crate::report::chain(&e), retry_in = ?delay, "instance metadata not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn read_identity(&self) -> Result<Identity, IdentityError> {
        let instance_id = self.required("/latest/meta-data/instance-id").await?;
        let region = self.required("/latest/meta-data/placement/region").await?;
        let availability_zone = self
            .required("/latest/meta-data/placement/availability-zone")
            .await?;
        let lifecycle_state = self.lifecycle_state().await?;
        let group = self
            .optional("/latest/meta-data/tags/instance/aws:autoscaling:groupName")
            .await?;
        let account = self
            .optional("/latest/dynamic/instance-identity/document")
            .await?
            .and_then(|doc| serde_json::from_str::<serde_json::Value>(&doc).ok())
            .and_then(|doc| doc["accountId"].as_str().map(String::from))
            .filter(|a| crate::config::check_account_id(a).is_ok());
        Ok(Identity {
            instance_id,
            region,
            availability_zone,
            lifecycle_state,
            group,
            account,
        })
    }

    pub async fn lifecycle_state(&self) -> Result<Option<LifecycleState>, IdentityError> {
        let state = self
            .optional("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await?;
        Ok(state.as_deref().map(LifecycleState::parse))
    }

    /// A spot interruption notice (`{"action": "terminate", "time": ...}`), if one is posted.
    pub async fn spot_action(&self) -> Result<Option<String>, IdentityError> {
        self.optional("/latest/meta-data/spot/instance-action")
            .await
    }
}

impl Default for Imds {
    fn default() -> Self {
        Imds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states_parse_and_print_as_imds_spells_them() {
        for (text, state) in [
            ("InService", LifecycleState::InService),
            ("Warmed:Stopped", LifecycleState::Warmed("Stopped".into())),
            ("Terminated", LifecycleState::Leaving("Terminated".into())),
            (
                "Terminating:Wait",
                LifecycleState::Leaving("Terminating:Wait".into()),
            ),
            ("Pending", LifecycleState::Other("Pending".into())),
        ] {
            assert_eq!(LifecycleState::parse(text), state, "{text}");
            assert_eq!(state.to_string(), text);
        }
        let id = Identity {
            lifecycle_state: Some(LifecycleState::parse("Warmed:Running")),
            ..Identity::local()
        };
        assert!(id.is_warm_pool());
        assert!(!Identity::local().is_warm_pool());
    }
}
