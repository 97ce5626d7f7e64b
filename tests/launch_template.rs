//! launch-template/berth.yaml deployed into moto's CloudFormation, then read back the way AWS
//! would show it: the launch template's user-data must carry a berth.toml that berth's own
//! config loader accepts, and whose hooks, group, target group, health port and path are the
//! ones the stack's group and target group really use.
//!
//! What moto 5.2 does with the template: it creates the ECR repository, the release parameter,
//! the SSM document, the security groups and their ingress rules, the load balancer, target
//! group and listener, the IAM role and instance profile, the launch template and the group
//! (with instances, registered in the target group). It skips `AWS::EC2::SecurityGroupEgress`
//! ("no CloudFormation support") and ignores the group's `LifecycleHookSpecificationList`
//! and `UpdatePolicy`: DescribeLifecycleHooks answers nothing for a group it made from a
//! template. So the hook names are checked against the template's hook specifications,
//! resolved with the parameters moto reports for the stack; and against moto's hooks too,
//! should a later moto create them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use berth::config::Location;
use berth::config::{AgentConfig, Strategy};
use common::aws::{self, Moto, REGION};
use serde_json::Value;

fn launch_template_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../launch-template")
}

// ----- AWS's query protocol, by hand (the crate has no CloudFormation or EC2 client) -----

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One query-protocol call to moto. moto tells services apart by the credential scope of the
/// Authorization header, which it does not verify.
fn query(
    moto: &Moto,
    service: &str,
    version: &str,
    action: &str,
    params: &[(&str, &str)],
) -> String {
    let mut body = format!("Action={action}&Version={version}");
    for (k, v) in params {
        body.push_str(&format!("&{}={}", form_encode(k), form_encode(v)));
    }
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    );
    let (status, text) = aws::http_with_headers(
        "POST",
        &format!("{}/", moto.url),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        Some(&body),
    );
    assert_eq!(status, 200, "{service} {action}: HTTP {status}: {text}");
    text
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of every `<tag>...</tag>` in document order (an empty `<tag/>` gives "").
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close, empty) = (format!("<{tag}>"), format!("</{tag}>"), format!("<{tag}/>"));
    let mut out = Vec::new();
    let mut rest = xml;
    loop {
        let next_open = rest.find(&open);
        let next_empty = rest.find(&empty);
        match (next_open, next_empty) {
            (Some(o), e) if e.is_none_or(|e| o < e) => {
                let start = o + open.len();
                let end = start + rest[start..].find(&close).expect("a closing tag");
                out.push(xml_unescape(&rest[start..end]));
                rest = &rest[end + close.len()..];
            }
            (_, Some(e)) => {
                out.push(String::new());
                rest = &rest[e + empty.len()..];
            }
            _ => return out,
        }
    }
}

fn xml_one(xml: &str, tag: &str) -> String {
    let all = xml_all(xml, tag);
    assert_eq!(all.len(), 1, "exactly one <{tag}> expected in {xml}");
    all.into_iter().next().unwrap()
}

/// `key -> value` for each `<member>` holding both tags (stack parameters, outputs).
fn xml_pairs(xml: &str, key: &str, value: &str) -> BTreeMap<String, String> {
    xml.split("<member>")
        .skip(1)
        .filter_map(|m| {
            let k = xml_all(m, key).into_iter().next()?;
            let v = xml_all(m, value).into_iter().next()?;
            Some((k, v))
        })
        .collect()
}

// ----- the stack -----

/// A VPC with a private and a public subnet in each of two AZs: the template's network inputs.
fn network(moto: &Moto) -> BTreeMap<&'static str, String> {
    let ec2 =
        |action: &str, params: &[(&str, &str)]| query(moto, "ec2", "2016-11-15", action, params);
    let vpc = xml_one(&ec2("CreateVpc", &[("CidrBlock", "10.20.0.0/16")]), "vpcId");
    let mut out = BTreeMap::from([("VpcId", vpc.clone())]);
    for (i, (name, az)) in [
        ("PrivateSubnetA", "us-east-1a"),
        ("PrivateSubnetB", "us-east-1b"),
        ("PublicSubnetA", "us-east-1a"),
        ("PublicSubnetB", "us-east-1b"),
    ]
    .into_iter()
    .enumerate()
    {
        let cidr = format!("10.20.{i}.0/24");
        let xml = ec2(
            "CreateSubnet",
            &[
                ("VpcId", &vpc),
                ("CidrBlock", &cidr),
                ("AvailabilityZone", az),
            ],
        );
        out.insert(name, xml_one(&xml, "subnetId"));
    }
    out
}

struct Stack {
    name: String,
    /// The parameters as moto reports them for the stack (defaults filled in).
    parameters: BTreeMap<String, String>,
    /// Logical id -> physical id.
    resources: BTreeMap<String, String>,
    outputs: BTreeMap<String, String>,
}

/// Creates the stack from launch-template/berth.yaml with these parameters (plus the network)
/// and waits until moto says CREATE_COMPLETE.
fn deploy(moto: &Moto, name: &str, params: &[(&str, &str)]) -> Stack {
    let template = std::fs::read_to_string(launch_template_dir().join("berth.yaml")).unwrap();
    let cfn =
        |action: &str, p: &[(&str, &str)]| query(moto, "cloudformation", "2010-05-15", action, p);
    let net = network(moto);
    let mut all: Vec<(String, String)> = net
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    all.extend(
        params
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    );
    let mut form: Vec<(String, String)> = vec![
        ("StackName".into(), name.into()),
        ("TemplateBody".into(), template),
        ("Capabilities.member.1".into(), "CAPABILITY_IAM".into()),
    ];
    for (i, (k, v)) in all.iter().enumerate() {
        form.push((
            format!("Parameters.member.{}.ParameterKey", i + 1),
            k.clone(),
        ));
        form.push((
            format!("Parameters.member.{}.ParameterValue", i + 1),
            v.clone(),
        ));
    }
    let form_refs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cfn("CreateStack", &form_refs);

    let limit = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let described = loop {
        let xml = cfn("DescribeStacks", &[("StackName", name)]);
        let status = xml_one(&xml, "StackStatus");
        if status == "CREATE_COMPLETE" {
            break xml;
        }
        assert!(
            status.ends_with("IN_PROGRESS") && std::time::Instant::now() < limit,
            "stack {name}: {status}: {xml}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let resources_xml = cfn("DescribeStackResources", &[("StackName", name)]);
    Stack {
        name: name.to_string(),
        parameters: xml_pairs(&described, "ParameterKey", "ParameterValue"),
        outputs: xml_pairs(&described, "OutputKey", "OutputValue"),
        resources: xml_pairs(&resources_xml, "LogicalResourceId", "PhysicalResourceId"),
    }
}

impl Stack {
    fn resource(&self, logical: &str) -> &str {
        self.resources.get(logical).unwrap_or_else(|| {
            panic!(
                "stack {}: no {logical} among {:?}",
                self.name, self.resources
            )
        })
    }
}

/// The launch template's latest version, as EC2 (moto) describes it.
fn launch_template_version(moto: &Moto, id: &str) -> String {
    query(
        moto,
        "ec2",
        "2016-11-15",
        "DescribeLaunchTemplateVersions",
        &[
            ("LaunchTemplateId", id),
            ("LaunchTemplateVersion.1", "$Latest"),
        ],
    )
}

/// The berth.toml inside the user-data: the heredoc the template's header fills in.
fn embedded_config(user_data: &str) -> String {
    let start = "BERTH_CONFIG=$(cat <<'BERTH_TOML'\n";
    let begin = user_data
        .find(start)
        .expect("the user-data sets BERTH_CONFIG from a heredoc")
        + start.len();
    let end = begin
        + user_data[begin..]
            .find("\nBERTH_TOML\n")
            .expect("the heredoc's end");
    user_data[begin..end].to_string()
}

/// The template's lifecycle hook specifications as (transition, name), each name resolved from
/// the parameter its `Ref` names, with the parameter values moto reports for the stack.
fn template_hooks(parameters: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(launch_template_dir().join("berth.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let specs = doc["Resources"]["AutoScalingGroup"]["Properties"]
        ["LifecycleHookSpecificationList"]
        .as_array()
        .expect("the group has LifecycleHookSpecificationList")
        .clone();
    specs
        .iter()
        .map(|s| {
            let name = match &s["LifecycleHookName"] {
                Value::String(n) => n.clone(),
                other => {
                    let param = other["Ref"]
                        .as_str()
                        .expect("a hook name is a string or a Ref");
                    parameters[param].clone()
                }
            };
            (s["LifecycleTransition"].as_str().unwrap().to_string(), name)
        })
        .collect()
}

// ----- the tests -----

#[test]
fn user_data_carries_a_berth_config_that_matches_the_stack() {
    let moto = Moto::start();
    let stack = deploy(
        &moto,
        "shop",
        &[
            ("Project", "shop"),
            ("Strategy", "drain"),
            ("ConfigBucket", "shop-config"),
            ("ConfigPrefix", "prod/shop"),
            ("EnvFileName", "shop.env"),
            ("ReleaseParameterName", "/shop/release"),
            ("InitialRelease", "a1b2c3d4e5f6"),
            ("EcrRepositoryName", "shop/api"),
            ("HealthPort", "9091"),
            ("HealthPath", "/ready"),
            ("HealthyThreshold", "4"),
            ("LaunchHookName", "shop-launch"),
            ("TerminateHookName", "shop-terminate"),
        ],
    );

    // The launch template as EC2 holds it.
    let version = launch_template_version(&moto, stack.resource("LaunchTemplate"));
    let user_data_b64 = xml_one(&version, "userData");
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(user_data_b64.trim())
            .expect("user-data is base64"),
    )
    .expect("user-data is UTF-8");
    assert!(user_data.starts_with("#!/bin/bash\n"), "{user_data}");
    assert!(
        user_data.len() < 16 * 1024,
        "user-data is {} bytes",
        user_data.len()
    );
    // The script itself arrives as user-data.sh is (every line after its shebang).
    let script = std::fs::read_to_string(launch_template_dir().join("user-data.sh")).unwrap();
    let body = script.split_once('\n').unwrap().1;
    assert!(
        user_data.contains(body),
        "the deployed user-data does not contain launch-template/user-data.sh; run embed.py"
    );
    assert!(
        user_data.contains("BERTH_STRATEGY='drain'\n"),
        "{user_data}"
    );
    assert_eq!(xml_one(&version, "httpTokens"), "required");
    assert_eq!(xml_one(&version, "httpPutResponseHopLimit"), "1");
    assert_eq!(xml_one(&version, "instanceMetadataTags"), "enabled");

    // berth's own loader accepts the config (it rejects unknown keys and bad values).
    let toml = embedded_config(&user_data);
    let config = AgentConfig::parse(Path::new("/etc/berth/berth.toml"), &toml)
        .unwrap_or_else(|e| panic!("berth rejects the launch template's config: {e}\n{toml}"));
    assert_eq!(config.project, "shop");
    assert_eq!(config.upgrade.strategy, Strategy::Drain);
    assert!(!config.local);
    assert_eq!(
        config.compose,
        Location::S3 {
            bucket: "shop-config".into(),
            key: "prod/shop/compose.yaml".into()
        }
    );
    assert_eq!(
        config.env_files,
        vec![Location::S3 {
            bucket: "shop-config".into(),
            key: "prod/shop/shop.env".into()
        }]
    );
    assert_eq!(
        config.release,
        Some(Location::Ssm {
            name: "/shop/release".into()
        })
    );
    // Releases: manifests under the config prefix, the store the stack names in its outputs.
    assert_eq!(
        config.manifests,
        Some(berth::config::Store::S3 {
            bucket: "shop-config".into(),
            prefix: "prod/shop/".into()
        })
    );
    assert_eq!(stack.outputs["ReleaseStore"], "s3://shop-config/prod/shop/");

    // The release parameter the config names exists, with the initial release.
    let ssm = aws::block_on(async { moto.ssm().await });
    let release = aws::block_on(ssm.get_parameter().name("/shop/release").send()).unwrap();
    assert_eq!(release.parameter().unwrap().value(), Some("a1b2c3d4e5f6"));

    // The group berth completes hooks on is the stack's group, behind the config's target group.
    let asg = aws::block_on(async { aws_sdk_autoscaling::Client::new(&moto.sdk_config().await) });
    let group_name = config
        .lifecycle
        .group
        .clone()
        .expect("the config names the group");
    let groups = aws::block_on(
        asg.describe_auto_scaling_groups()
            .auto_scaling_group_names(&group_name)
            .send(),
    )
    .unwrap();
    let group = groups
        .auto_scaling_groups()
        .first()
        .unwrap_or_else(|| panic!("moto has no group {group_name}"));
    assert_eq!(
        group.auto_scaling_group_name(),
        Some(stack.resource("AutoScalingGroup"))
    );
    let target_group_arn = config
        .load_balancer
        .target_group_arn
        .clone()
        .expect("the config names the target group");
    assert_eq!(
        group.target_group_arns(),
        std::slice::from_ref(&target_group_arn)
    );
    assert_eq!(target_group_arn, stack.resource("TargetGroup"));
    assert_eq!(group.health_check_type(), Some("ELB"));
    // Two AZs.
    let subnets: Vec<&str> = group.vpc_zone_identifier().unwrap().split(',').collect();
    assert_eq!(subnets.len(), 2, "{subnets:?}");

    // The hooks berth completes are the group's hooks.
    let hooks = template_hooks(&stack.parameters);
    assert_eq!(
        config.lifecycle.hook.as_deref(),
        Some(hooks["autoscaling:EC2_INSTANCE_LAUNCHING"].as_str())
    );
    assert_eq!(
        config.lifecycle.terminate_hook.as_deref(),
        Some(hooks["autoscaling:EC2_INSTANCE_TERMINATING"].as_str())
    );
    assert_eq!(config.lifecycle.hook.as_deref(), Some("shop-launch"));
    assert_eq!(
        config.lifecycle.terminate_hook.as_deref(),
        Some("shop-terminate")
    );
    let moto_hooks = aws::block_on(
        asg.describe_lifecycle_hooks()
            .auto_scaling_group_name(&group_name)
            .send(),
    )
    .unwrap();
    let moto_hooks: BTreeMap<String, String> = moto_hooks
        .lifecycle_hooks()
        .iter()
        .map(|h| {
            (
                h.lifecycle_transition().unwrap_or_default().to_string(),
                h.lifecycle_hook_name().unwrap_or_default().to_string(),
            )
        })
        .collect();
    if !moto_hooks.is_empty() {
        assert_eq!(moto_hooks, hooks, "moto's hooks for {group_name}");
    }

    // The target group checks berth's health endpoint, with the thresholds berth counts.
    let elb = aws::block_on(async { moto.elbv2().await });
    let tgs = aws::block_on(
        elb.describe_target_groups()
            .target_group_arns(&target_group_arn)
            .send(),
    )
    .unwrap();
    let tg = &tgs.target_groups()[0];
    assert_eq!(tg.port(), Some(8080));
    assert_eq!(config.load_balancer.port, Some(8080));
    assert_eq!(config.health.listen.port(), 9091);
    assert_eq!(
        tg.health_check_port(),
        Some(config.health.listen.port().to_string().as_str())
    );
    assert_eq!(tg.health_check_path(), Some(config.health.path.as_str()));
    assert_eq!(config.health.path, "/ready");
    assert_eq!(
        tg.healthy_threshold_count().map(|n| n as u32),
        config.load_balancer.healthy_threshold
    );
    assert_eq!(config.load_balancer.healthy_threshold, Some(4));
    assert_eq!(
        tg.unhealthy_threshold_count().map(|n| n as u32),
        config.load_balancer.unhealthy_threshold
    );

    // The SSM document runs berth upgrade, and is the stack's output.
    let document = stack.resource("UpgradeDocument");
    assert_eq!(stack.outputs["UpgradeDocumentName"], document);
    let doc = aws::block_on(ssm.get_document().name(document).send()).unwrap();
    assert_eq!(doc.document_type().map(|t| t.as_str()), Some("Command"));
    let content = doc.content().unwrap();
    assert!(content.contains("/usr/bin/berth upgrade"), "{content}");
    assert!(content.contains("allowNoRollback"), "{content}");
    assert!(content.contains("aws:runShellScript"), "{content}");
}

#[test]
fn containers_reach_imds_only_when_asked() {
    let moto = Moto::start();
    // No ConfigBucket: the stack makes one, with versions (what a release pins needs them).
    let stack = deploy(
        &moto,
        "imds",
        &[("InitialRelease", "1"), ("ContainersReachImds", "true")],
    );
    let version = launch_template_version(&moto, stack.resource("LaunchTemplate"));
    assert_eq!(xml_one(&version, "httpTokens"), "required");
    assert_eq!(xml_one(&version, "httpPutResponseHopLimit"), "2");
    // The defaults: the proxy strategy, berth's default health endpoint and hook names.
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(xml_one(&version, "userData").trim())
            .unwrap(),
    )
    .unwrap();
    let config = AgentConfig::parse(
        Path::new("/etc/berth/berth.toml"),
        &embedded_config(&user_data),
    )
    .unwrap();
    assert_eq!(config.upgrade.strategy, Strategy::Proxy);
    assert_eq!(config.health.listen.port(), 8081);
    assert_eq!(config.health.path, "/healthz");
    assert_eq!(config.lifecycle.hook.as_deref(), Some("berth-launch"));
    assert_eq!(
        config.lifecycle.terminate_hook.as_deref(),
        Some("berth-terminate")
    );
    assert_eq!(config.lifecycle.group.as_deref(), Some("imds"));
    let bucket = stack.resource("ConfigStore").to_string();
    assert_eq!(
        config.manifests,
        Some(berth::config::Store::S3 {
            bucket: bucket.clone(),
            prefix: "api/".into()
        })
    );
    assert_eq!(stack.outputs["ReleaseStore"], format!("s3://{bucket}/api/"));
    // moto's CloudFormation makes the bucket but leaves its VersioningConfiguration out, so
    // the template itself is read for it.
    let template: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(launch_template_dir().join("berth.yaml")).unwrap(),
    )
    .unwrap();
    let store = &template["Resources"]["ConfigStore"];
    assert_eq!(
        store["Properties"]["VersioningConfiguration"]["Status"].as_str(),
        Some("Enabled"),
        "{store:?}"
    );
    assert_eq!(store["DeletionPolicy"].as_str(), Some("Retain"));
}
