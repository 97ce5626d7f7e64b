//! A resolved service as the Docker Engine API's container-create body, with compose's labels.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, HostConfigLogConfig, Mount,
    MountBindOptions, MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType,
    MountVolumeOptions, NetworkingConfig, PortBinding, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};

use crate::compose::{MountKind, MountSpec, Project, Service};
use crate::engine::docker::labels;

/// One container berth wants to exist.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub service: String,
    pub number: u32,
    pub name: String,
    pub config_hash: String,
    pub body: ContainerCreateBody,
    /// Networks past the first, joined after create (API 1.41 takes one network at create).
    pub extra_networks: Vec<(String, EndpointSettings)>,
}

pub fn container_name(project: &str, svc: &Service, number: u32) -> String {
    svc.container_name
        .clone()
        .unwrap_or_else(|| format!("{project}-{}-{number}", svc.name))
}

/// compose's `depends_on` label: `db:service_healthy:false,cache:service_started:false`.
fn depends_on_label(svc: &Service) -> String {
    svc.depends_on
        .iter()
        .map(|(name, d)| format!("{name}:{}:{}", d.condition.as_str(), d.restart))
        .collect::<Vec<_>>()
        .join(",")
}

/// The create body for replica `number` of `svc`, and the name and hash it is known by.
pub fn build(
    project: &Project,
    svc: &Service,
    number: u32,
    image_id: Option<&str>,
    digest_key: &str,
) -> ContainerSpec {
    let config_hash = svc.config_hash_keyed(digest_key);
    let lbls = container_labels(project, svc, number, image_id, &config_hash, digest_key);
    let (exposed, bindings) = ports(svc);
    let host_config = host_config(svc, bindings);
    let (networking_config, extra_networks) = networks(svc);
    let body = ContainerCreateBody {
        image: Some(svc.image.clone()),
        hostname: svc.hostname.clone(),
        domainname: svc.domainname.clone(),
        user: svc.user.clone(),
        working_dir: svc.working_dir.clone(),
        env: Some(
            svc.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        cmd: svc.command.clone(),
        entrypoint: svc.entrypoint.clone(),
        labels: Some(lbls),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck: healthcheck(svc),
        stop_signal: svc.stop_signal.clone(),
        stop_timeout: svc.stop_grace_period_secs,
        tty: svc.tty.then_some(true),
        open_stdin: svc.stdin_open.then_some(true),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    };
    ContainerSpec {
        service: svc.name.clone(),
        number,
        name: container_name(&project.name, svc, number),
        config_hash,
        body,
        extra_networks,
    }
}

/// The service's own labels, with compose's (and berth's) on top.
fn container_labels(
    project: &Project,
    svc: &Service,
    number: u32,
    image_id: Option<&str>,
    config_hash: &str,
    digest_key: &str,
) -> HashMap<String, String> {
    let fields: Vec<String> = svc
        .field_digests_keyed(digest_key)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut lbls: HashMap<String, String> = svc
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let files: Vec<String> = project
        .config_files
        .iter()
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    for (k, v) in [
        (labels::PROJECT, project.name.clone()),
        (labels::SERVICE, svc.name.clone()),
        (labels::NUMBER, number.to_string()),
        (labels::ONEOFF, "False".to_string()),
        (labels::CONFIG_HASH, config_hash.to_string()),
        (labels::DEPENDS_ON, depends_on_label(svc)),
        (
            labels::WORKING_DIR,
            project.working_dir.to_string_lossy().to_string(),
        ),
        (labels::CONFIG_FILES, files.join(",")),
        (labels::VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (labels::FIELDS, fields.join(",")),
        (labels::MANAGED, "true".to_string()),
    ] {
        lbls.insert(k.to_string(), v);
    }
    if let Some(id) = image_id {
        lbls.insert(labels::IMAGE.to_string(), id.to_string());
    }

    lbls
}

/// Exposed ports (`8080/tcp`, sorted) and the host bindings of published ones.
fn ports(svc: &Service) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut exposed: Vec<String> = svc
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.target, p.protocol))
        .collect();
    for e in &svc.expose {
        exposed.push(if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        });
    }
    exposed.sort();
    exposed.dedup();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &svc.ports {
        let entry = bindings
            .entry(format!("{}/{}", p.target, p.protocol))
            .or_insert(Some(vec![]));
        if let Some(list) = entry {
            list.push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.published.clone().unwrap_or_default()),
            });
        }
    }

    (exposed, bindings)
}

/// A bind with an SELinux label goes through the legacy `Binds` form (`src:dst:rw,z`): the
/// Mount API cannot relabel.
fn relabelled(m: &MountSpec) -> bool {
    m.kind == MountKind::Bind && m.selinux.is_some()
}

fn binds(svc: &Service) -> Vec<String> {
    svc.mounts
        .iter()
        .filter(|m| relabelled(m))
        .map(|m| {
            let mut opts = vec![if m.read_only { "ro" } else { "rw" }];
            opts.extend(m.selinux.as_deref());
            opts.extend(m.propagation.as_deref());
            let source = m.source.as_deref().unwrap_or_default();
            format!("{source}:{}:{}", m.target, opts.join(","))
        })
        .collect()
}

fn propagation(p: &str) -> MountBindOptionsPropagationEnum {
    match p {
        "private" => MountBindOptionsPropagationEnum::PRIVATE,
        "rshared" => MountBindOptionsPropagationEnum::RSHARED,
        "shared" => MountBindOptionsPropagationEnum::SHARED,
        "rslave" => MountBindOptionsPropagationEnum::RSLAVE,
        "slave" => MountBindOptionsPropagationEnum::SLAVE,
        // The resolver accepts only these and rprivate, Docker's default.
        _ => MountBindOptionsPropagationEnum::RPRIVATE,
    }
}

/// `tmpfs:` entries with options the Mount API cannot carry, as Docker's `Tmpfs` takes them.
fn tmpfs(svc: &Service) -> HashMap<String, String> {
    svc.mounts
        .iter()
        .filter_map(|m| Some((m.target.clone(), m.tmpfs_options.clone()?)))
        .collect()
}

fn mounts(svc: &Service) -> Vec<Mount> {
    svc.mounts
        .iter()
        .filter(|m| !relabelled(m) && m.tmpfs_options.is_none())
        .map(|m| Mount {
            target: Some(m.target.clone()),
            source: m.source.clone(),
            typ: Some(match m.kind {
                MountKind::Bind => MountType::BIND,
                MountKind::Volume => MountType::VOLUME,
                MountKind::Tmpfs => MountType::TMPFS,
            }),
            read_only: Some(m.read_only),
            volume_options: (m.kind == MountKind::Volume && m.nocopy).then(|| MountVolumeOptions {
                no_copy: Some(true),
                ..Default::default()
            }),
            bind_options: m.propagation.as_deref().map(|p| MountBindOptions {
                propagation: Some(propagation(p)),
                ..Default::default()
            }),
            tmpfs_options: (m.tmpfs_size.is_some() || m.tmpfs_mode.is_some()).then(|| {
                MountTmpfsOptions {
                    size_bytes: m.tmpfs_size,
                    mode: m.tmpfs_mode.map(i64::from),
                    ..Default::default()
                }
            }),
            ..Default::default()
        })
        .collect()
}

fn restart_policy(svc: &Service) -> Option<RestartPolicy> {
    svc.restart.as_ref().map(|(name, retries)| RestartPolicy {
        name: Some(match name.as_str() {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            _ => RestartPolicyNameEnum::NO,
        }),
        maximum_retry_count: (name == "on-failure").then_some(*retries),
    })
}

fn host_config(svc: &Service, bindings: HashMap<String, Option<Vec<PortBinding>>>) -> HostConfig {
    let mounts = mounts(svc);
    let binds = binds(svc);
    let tmpfs = tmpfs(svc);
    let restart_policy = restart_policy(svc);
    HostConfig {
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        binds: (!binds.is_empty()).then_some(binds),
        restart_policy,
        memory: svc.memory,
        memory_reservation: svc.memory_reservation,
        device_requests: (!svc.device_requests.is_empty()).then(|| {
            svc.device_requests
                .iter()
                .map(|d| bollard::models::DeviceRequest {
                    driver: d.driver.clone(),
                    count: Some(d.count),
                    device_ids: (!d.device_ids.is_empty()).then(|| d.device_ids.clone()),
                    capabilities: Some(vec![d.capabilities.clone()]),
                    options: (!d.options.is_empty()).then(|| {
                        d.options
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    }),
                })
                .collect()
        }),
        nano_cpus: svc.nano_cpus,
        pids_limit: svc.pids_limit,
        shm_size: svc.shm_size,
        ulimits: (!svc.ulimits.is_empty()).then(|| {
            svc.ulimits
                .iter()
                .map(|(name, (soft, hard))| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(*soft),
                    hard: Some(*hard),
                })
                .collect()
        }),
        log_config: svc.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: (!l.options.is_empty()).then(|| {
                l.options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
        }),
        cap_add: (!svc.cap_add.is_empty()).then(|| svc.cap_add.clone()),
        cap_drop: (!svc.cap_drop.is_empty()).then(|| svc.cap_drop.clone()),
        security_opt: (!svc.security_opt.is_empty()).then(|| svc.security_opt.clone()),
        group_add: (!svc.group_add.is_empty()).then(|| svc.group_add.clone()),
        readonly_rootfs: svc.read_only.then_some(true),
        privileged: svc.privileged.then_some(true),
        sysctls: (!svc.sysctls.is_empty()).then(|| {
            svc.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        extra_hosts: (!svc.extra_hosts.is_empty()).then(|| svc.extra_hosts.clone()),
        dns: (!svc.dns.is_empty()).then(|| svc.dns.clone()),
        dns_search: (!svc.dns_search.is_empty()).then(|| svc.dns_search.clone()),
        init: svc.init,
        network_mode: svc.networks.values().next().map(|n| n.name.clone()),
        ..Default::default()
    }
}

fn healthcheck(svc: &Service) -> Option<HealthConfig> {
    svc.healthcheck.as_ref().map(|h| HealthConfig {
        test: h.test.clone(),
        interval: h.interval_ns,
        timeout: h.timeout_ns,
        retries: h.retries,
        start_period: h.start_period_ns,
        start_interval: h.start_interval_ns,
    })
}

/// The first network goes in the create body; the others are joined after create.
fn networks(svc: &Service) -> (Option<NetworkingConfig>, Vec<(String, EndpointSettings)>) {
    let endpoint = |n: &crate::compose::ServiceNetwork| {
        let mut aliases = vec![svc.name.clone()];
        aliases.extend(n.aliases.iter().cloned());
        let addressed =
            n.ipv4_address.is_some() || n.ipv6_address.is_some() || !n.link_local_ips.is_empty();
        let ipam = addressed.then(|| bollard::models::EndpointIpamConfig {
            ipv4_address: n.ipv4_address.clone(),
            ipv6_address: n.ipv6_address.clone(),
            link_local_ips: (!n.link_local_ips.is_empty()).then(|| n.link_local_ips.clone()),
        });
        EndpointSettings {
            aliases: Some(aliases),
            ipam_config: ipam,
            // Only the first network's (the resolver allows no other); an engine too old to
            // read it here is refused before anything changes (checks.rs).
            mac_address: svc
                .mac_address
                .clone()
                .filter(|_| Some(&n.name) == svc.networks.values().next().map(|f| &f.name)),
            driver_opts: (!n.driver_opts.is_empty()).then(|| {
                n.driver_opts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..Default::default()
        }
    };
    let mut nets = svc.networks.values();
    let first = nets.next();
    let networking_config = first.map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(n.name.clone(), endpoint(n))])),
    });
    let extra_networks = nets.map(|n| (n.name.clone(), endpoint(n))).collect();
    (networking_config, extra_networks)
}
