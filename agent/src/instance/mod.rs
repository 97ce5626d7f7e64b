//! The instance berth runs on: who it is ([`identity`], IMDSv2), what its AutoScaling group
//! waits for ([`hook`]) and hears about its health ([`group`]), and what the [`load_balancer`]
//! sees of it, and its place in the [`target_group`].

pub mod group;
pub mod hook;
pub mod identity;
pub mod load_balancer;
pub mod target_group;

use std::time::Duration;

use crate::aws::Aws;
use crate::config::AgentConfig;
use identity::{Identity, IdentityError, Imds};

/// Who this instance is and its AWS clients; a local run has a fixed identity and no AWS.
#[derive(Debug, Clone)]
pub struct Instance {
    pub identity: Identity,
    pub aws: Option<Aws>,
}

impl Instance {
    /// Reads the identity from IMDS (retrying for `timeouts.imds_secs`), then builds the AWS
    /// clients for its region.
    pub async fn discover(config: &AgentConfig) -> Result<Instance, IdentityError> {
        let identity = if config.local {
            Identity::local()
        } else {
            Imds::new()
                .identity(Duration::from_secs(config.timeouts.imds_secs))
                .await?
        };
        let owner = config.bucket_owner.clone().or(identity.account.clone());
        let aws = aws_for(config, Some(identity.region.clone()), owner).await;
        Ok(Instance { identity, aws })
    }
}

/// The AWS clients for `region` (the environment's wins), S3's pinned to buckets of
/// `bucket_owner`; none in a local run.
pub async fn aws_for(
    config: &AgentConfig,
    region: Option<String>,
    bucket_owner: Option<String>,
) -> Option<Aws> {
    if config.local {
        return None;
    }
    Some(
        Aws::load(
            region,
            config.s3_path_style,
            Duration::from_secs(config.timeouts.fetch_secs),
            bucket_owner,
        )
        .await,
    )
}
