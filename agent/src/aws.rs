//! AWS clients, built once from the SDK's default chain: region and credentials as the SDK finds
//! them (environment, profile, IMDS role credentials on EC2), endpoints from the standard
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables. Nothing here knows about tests.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::ProvideErrorMetadata;

#[derive(Debug, Clone)]
pub struct Aws {
    pub sdk: SdkConfig,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub ecr: aws_sdk_ecr::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Aws {
    /// `region` is the instance's (from IMDS) unless the environment names one. With
    /// `bucket_owner`, every S3 request says which account must own its bucket
    /// (`x-amz-expected-bucket-owner`): a bucket of that name owned by anyone else answers 403
    /// instead of serving what its owner put there.
    pub async fn load(
        region: Option<String>,
        s3_path_style: bool,
        op_timeout: Duration,
        bucket_owner: Option<String>,
    ) -> Aws {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // Transient failures (throttling, 5xx, timeouts) are retried with backoff.
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(op_timeout.min(Duration::from_secs(30)))
                    .operation_timeout(op_timeout)
                    .build(),
            );
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            if let Some(r) = region {
                loader = loader.region(Region::new(r));
            }
        }
        let sdk = loader.load().await;
        let mut s3_conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(s3_path_style);
        if let Some(owner) = bucket_owner {
            s3_conf = s3_conf.interceptor(ExpectedOwner(owner));
        }
        let s3_conf = s3_conf.build();
        Aws {
            s3: aws_sdk_s3::Client::from_conf(s3_conf),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            ecr: aws_sdk_ecr::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&sdk),
            sdk,
        }
    }
}

/// Sets `x-amz-expected-bucket-owner` on every S3 request: in one place, so that no call
/// (a new one included) reads or writes a bucket without it.
#[derive(Debug)]
struct ExpectedOwner(String);

impl aws_sdk_s3::config::Intercept for ExpectedOwner {
    fn name(&self) -> &'static str {
        "ExpectedBucketOwner"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-amz-expected-bucket-owner", self.0.clone());
        Ok(())
    }
}

/// One line for an SDK error: the service's code and message when it answered, else the
/// cause chain (timeouts, connection refused). Not the SDK's `DisplayErrorContext`, which
/// appends a Debug dump of the whole error.
pub fn describe<E>(e: &E) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => crate::report::chain(e),
    }
}

/// The service error's code, when the service answered.
pub fn code_of<E: ProvideErrorMetadata>(e: &E) -> Option<String> {
    e.code().map(String::from)
}
