//! Loader tests through the public entry [`super::load`]: compose files written into a temporary
//! directory, the process environment passed in as a map (never the real one). Each test states
//! the behaviour of `docker compose` / compose-go it checks.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    load, ComposeError, DependencyCondition, LoadOptions, MountKind, MountSpec, PortMapping,
    Project,
};

const MIB: i64 = 1024 * 1024;
const SEC: i64 = 1_000_000_000;

/// A project directory `<tmp>/<name>` and the options to load it with.
struct Fx {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    opts: LoadOptions,
}

impl Fx {
    fn new() -> Fx {
        Fx::named("proj")
    }

    fn named(name: &str) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let opts = LoadOptions {
            working_dir: dir.clone(),
            ..LoadOptions::default()
        };
        Fx { tmp, dir, opts }
    }

    /// A project whose `compose.yaml` is `yaml`.
    fn with(yaml: &str) -> Fx {
        let fx = Fx::new();
        fx.write("compose.yaml", yaml);
        fx
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// `rel` inside the project directory, as a string (as a mount's source holds it).
    fn in_dir(&self, rel: &str) -> String {
        self.dir.join(rel).to_str().unwrap().to_string()
    }

    /// The path of the project's `compose.yaml`, as error messages show it.
    fn compose_file(&self) -> String {
        self.dir.join("compose.yaml").display().to_string()
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    fn env(mut self, key: &str, value: &str) -> Fx {
        self.opts.environment.insert(key.into(), value.into());
        self
    }

    /// Loads with `--profile` given for each of `profiles`.
    fn profiles(mut self, profiles: &[&str]) -> Fx {
        self.opts.profiles = strings(profiles);
        self
    }

    fn load(&self) -> Result<Project, ComposeError> {
        load(&self.opts)
    }

    fn ok(&self) -> Project {
        self.load()
            .unwrap_or_else(|e| panic!("expected the project to load, got: {e}"))
    }

    fn err(&self) -> ComposeError {
        match self.load() {
            Ok(p) => panic!(
                "expected an error, but the project loaded with services {:?}",
                p.services.keys().collect::<Vec<_>>()
            ),
            Err(e) => e,
        }
    }
}

fn port(target: u16, published: Option<&str>, host_ip: Option<&str>, proto: &str) -> PortMapping {
    PortMapping {
        target,
        protocol: proto.into(),
        host_ip: host_ip.map(String::from),
        published: published.map(String::from),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `text` contains every one of `parts`.
#[track_caller]
fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected {part:?} in: {text}");
    }
}

/// Loading `yaml` fails with a message naming the compose file and every one of `parts`.
/// Returns the error.
#[track_caller]
fn assert_error_names(yaml: &str, parts: &[&str]) -> ComposeError {
    let fx = Fx::with(yaml);
    let e = fx.err();
    let text = crate::report::chain(&e);
    assert_mentions(&text, &[&fx.compose_file()]);
    assert_mentions(&text, parts);
    e
}

/// One of the project's warnings contains `about`.
#[track_caller]
fn assert_warns(p: &Project, about: &str) {
    assert!(
        p.warnings.iter().any(|w| w.contains(about)),
        "no warning about {about:?}: {:?}",
        p.warnings
    );
}

/// The mount of service `web` at `target`.
#[track_caller]
fn web_mount<'a>(p: &'a Project, target: &str) -> &'a MountSpec {
    let mounts = &p.services["web"].mounts;
    mounts
        .iter()
        .find(|m| m.target == target)
        .unwrap_or_else(|| panic!("no mount at {target}: {mounts:?}"))
}

/// The ports of service `web` (nginx) whose `ports:` list is `list` (items indented six spaces).
#[track_caller]
fn web_ports(list: &str) -> Vec<PortMapping> {
    let yaml = format!("services:\n  web:\n    image: nginx\n    ports:\n{list}");
    Fx::with(&yaml).ok().services["web"].ports.clone()
}

/// Loading `yaml` fails: the value at `field` is invalid. Returns the error.
#[track_caller]
fn assert_invalid(yaml: &str, field: &str) -> ComposeError {
    let e = Fx::with(yaml).err();
    assert_eq!(invalid_field(&e), field);
    e
}

fn invalid_field(e: &ComposeError) -> &str {
    match e {
        ComposeError::Invalid { field, .. } => field,
        other => panic!("expected ComposeError::Invalid, got {other:?} ({other})"),
    }
}

// ---------------------------------------------------------------------------------------------
// Project name.

#[test]
fn project_name_flag_beats_env_and_top_level_name() {
    let mut fx = Fx::with("name: fromfile\nservices: {web: {image: nginx}}\n")
        .env("COMPOSE_PROJECT_NAME", "fromenv");
    fx.opts.project_name = Some("flag".into());
    let p = fx.ok();
    assert_eq!(p.name, "flag");
    assert_eq!(p.services["web"].networks["default"].name, "flag_default");
}

#[test]
fn compose_project_name_beats_top_level_name_and_may_come_from_dotenv() {
    let fx = Fx::with("name: fromfile\nservices: {web: {image: nginx}}\n")
        .env("COMPOSE_PROJECT_NAME", "fromenv");
    assert_eq!(fx.ok().name, "fromenv");

    let fx = Fx::with("name: fromfile\nservices: {web: {image: nginx}}\n");
    fx.write(".env", "COMPOSE_PROJECT_NAME=fromdotenv\n");
    assert_eq!(fx.ok().name, "fromdotenv");
}

#[test]
fn compose_project_name_interpolates_to_the_name_whatever_gave_it() {
    let yaml = "name: fromfile\nservices:\n  web:\n    image: nginx\n    container_name: ${COMPOSE_PROJECT_NAME}-web\n";
    let mut fx = Fx::with(yaml);
    fx.opts.project_name = Some("flag".into());
    assert_eq!(
        fx.ok().services["web"].container_name.as_deref(),
        Some("flag-web")
    );
    assert_eq!(
        Fx::with(yaml).ok().services["web"]
            .container_name
            .as_deref(),
        Some("fromfile-web")
    );
    let fx = Fx::with(&yaml.replace("name: fromfile\n", ""));
    assert_eq!(
        fx.ok().services["web"].container_name.as_deref(),
        Some("proj-web")
    );
}

#[test]
fn top_level_name_is_interpolated_normalized_and_beats_directory() {
    let fx = Fx::with("name: ${STACK}\nservices: {web: {image: nginx}}\n").env("STACK", "My.Stack");
    assert_eq!(fx.ok().name, "mystack");
}

#[test]
fn directory_name_is_normalized() {
    let fx = Fx::named("My.App");
    fx.write("compose.yaml", "services: {web: {image: nginx}}\n");
    let p = fx.ok();
    assert_eq!(p.name, "myapp");
    assert_eq!(p.services["web"].networks["default"].name, "myapp_default");
}

#[test]
fn directory_name_normalization_trims_leading_dash_and_underscore() {
    // compose-go NormalizeProjectName: lowercase, keep [a-z0-9_-], then TrimLeft("_-").
    let fx = Fx::named("_-Web.App");
    fx.write("compose.yaml", "services: {web: {image: nginx}}\n");
    match fx.load() {
        Ok(p) => assert_eq!(p.name, "webapp"),
        Err(e) => panic!("directory `_-Web.App` should give project `webapp`, got error: {e}"),
    }
}

#[test]
fn invalid_explicit_project_name_is_an_error() {
    let mut fx = Fx::with("services: {web: {image: nginx}}\n");
    fx.opts.project_name = Some("Bad.Name".into());
    match fx.err() {
        ComposeError::ProjectName { name } => assert_eq!(name, "Bad.Name"),
        other => panic!("expected ProjectName, got {other:?}"),
    }

    // COMPOSE_PROJECT_NAME is explicit too: validated, not normalized.
    let fx = Fx::with("services: {web: {image: nginx}}\n").env("COMPOSE_PROJECT_NAME", "UPPER");
    assert!(matches!(fx.err(), ComposeError::ProjectName { name } if name == "UPPER"));
}

#[test]
fn empty_compose_project_name_is_ignored() {
    // compose-go: `nameFromEnv, ok := Environment[COMPOSE_PROJECT_NAME]; ok && nameFromEnv != ""`.
    let fx = Fx::with("services: {web: {image: nginx}}\n").env("COMPOSE_PROJECT_NAME", "");
    match fx.load() {
        Ok(p) => assert_eq!(p.name, "proj"),
        Err(e) => panic!("an empty COMPOSE_PROJECT_NAME should fall back to the directory: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Default file discovery.

#[test]
fn default_file_prefers_compose_yaml() {
    let fx = Fx::new();
    fx.write("docker-compose.yml", "services: {web: {image: old}}\n");
    fx.write("compose.yaml", "services: {web: {image: new}}\n");
    let p = fx.ok();
    assert_eq!(p.services["web"].image, "new");
    assert_eq!(p.config_files, vec![fx.dir.join("compose.yaml")]);
    assert_eq!(p.working_dir, fx.dir);
}

#[test]
fn default_file_falls_back_to_docker_compose_yml() {
    let fx = Fx::new();
    fx.write("docker-compose.yml", "services: {web: {image: legacy}}\n");
    let p = fx.ok();
    assert_eq!(p.services["web"].image, "legacy");
    assert_eq!(p.config_files, vec![fx.dir.join("docker-compose.yml")]);
}

#[test]
fn docker_compose_yml_is_preferred_over_docker_compose_yaml() {
    // compose-go DefaultFileNames: compose.yaml, compose.yml, docker-compose.yml, docker-compose.yaml.
    let fx = Fx::new();
    fx.write("docker-compose.yaml", "services: {web: {image: yaml}}\n");
    fx.write("docker-compose.yml", "services: {web: {image: yml}}\n");
    assert_eq!(fx.ok().services["web"].image, "yml");
}

#[test]
fn default_override_file_is_merged() {
    // compose-go WithDefaultConfigPath appends compose.override.y(a)ml when it exists.
    let fx = Fx::new();
    fx.write("compose.yaml", "services: {web: {image: base}}\n");
    fx.write(
        "compose.override.yaml",
        "services: {web: {image: overridden}}\n",
    );
    assert_eq!(fx.ok().services["web"].image, "overridden");
}

#[test]
fn no_default_file_names_the_directory() {
    let fx = Fx::new();
    fx.write("other.yaml", "services: {web: {image: nginx}}\n");
    let e = fx.err();
    assert!(
        matches!(&e, ComposeError::NoFile { dir } if dir == &fx.dir),
        "{e:?}"
    );
    assert!(e.to_string().contains(&fx.dir.display().to_string()), "{e}");
}

#[test]
fn relative_file_resolves_against_working_dir_and_sets_project_dir() {
    let fx = Fx::new();
    fx.write("sub/app.yaml", "services: {web: {image: \"app:${TAG}\"}}\n");
    fx.write("sub/.env", "TAG=sub\n");
    fx.write(".env", "TAG=wrong\n");
    let mut fx = fx;
    fx.opts.files = vec![PathBuf::from("sub/app.yaml")];
    let p = fx.ok();
    assert_eq!(p.name, "sub");
    assert_eq!(p.working_dir, fx.dir.join("sub"));
    assert_eq!(p.config_files, vec![fx.dir.join("sub/app.yaml")]);
    assert_eq!(p.services["web"].image, "app:sub");
}

// ---------------------------------------------------------------------------------------------
// YAML.

#[test]
fn anchors_and_merge_keys_inside_services() {
    let fx = Fx::with(
        r#"
x-defaults: &defaults
  image: base:1
  restart: always
  environment: &env
    A: "1"
    B: "2"
services:
  web:
    <<: *defaults
    restart: "no"
  worker:
    <<: *defaults
    environment:
      <<: *env
      B: "3"
"#,
    );
    let p = fx.ok();
    let web = &p.services["web"];
    assert_eq!(web.image, "base:1");
    assert_eq!(web.restart, Some(("no".to_string(), 0)));
    assert_eq!(web.environment["A"], "1");
    let worker = &p.services["worker"];
    assert_eq!(worker.restart, Some(("always".to_string(), 0)));
    assert_eq!(worker.environment["A"], "1");
    assert_eq!(worker.environment["B"], "3");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn malformed_yaml_reports_file_and_line() {
    let e = assert_error_names(
        "services:\n  web:\n    image: nginx\n    command: a: b\n",
        &["line 4"],
    );
    assert!(matches!(e, ComposeError::Yaml { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Interpolation.

#[test]
fn process_env_beats_dotenv() {
    let fx = Fx::with("services: {web: {image: \"app:${TAG}\", labels: {other: \"${OTHER}\"}}}\n")
        .env("TAG", "fromenv");
    fx.write(".env", "TAG=fromdotenv\nOTHER=dot\n");
    let p = fx.ok();
    assert_eq!(p.services["web"].image, "app:fromenv");
    assert_eq!(p.services["web"].labels["other"], "dot");
}

#[test]
fn env_file_option_replaces_dotenv() {
    let mut fx = Fx::with(
        "services: {web: {image: \"app:${TAG}\", labels: {only: \"${ONLY_DOT:-unset}\"}}}\n",
    );
    fx.write(".env", "TAG=dot\nONLY_DOT=x\n");
    fx.write("custom.env", "TAG=custom\n");
    fx.opts.env_files = vec![PathBuf::from("custom.env")];
    let p = fx.ok();
    assert_eq!(p.services["web"].image, "app:custom");
    assert_eq!(p.services["web"].labels["only"], "unset");
}

#[test]
fn required_variable_error_names_file_path_and_message() {
    let e = assert_error_names(
        "services:\n  web:\n    image: \"${IMAGE:?set IMAGE please}\"\n",
        &["services.web.image", "set IMAGE please", "IMAGE"],
    );
    assert!(matches!(e, ComposeError::Interpolate { .. }), "{e:?}");
}

#[test]
fn invalid_interpolation_format_names_the_file() {
    let e = assert_error_names(
        "services:\n  web:\n    image: \"nginx:${TAG\"\n",
        &["services.web.image", "invalid interpolation format"],
    );
    assert!(matches!(e, ComposeError::Interpolate { .. }), "{e:?}");
}

#[test]
fn double_dollar_is_a_literal_dollar() {
    let fx = Fx::with(
        "services:\n  web:\n    image: nginx\n    command: echo $$HOME\n    environment: {PRICE: \"$$5\"}\n",
    )
    .env("HOME", "/home/x");
    let web = &fx.ok().services["web"];
    assert_eq!(web.command, Some(strings(&["echo", "$HOME"])));
    assert_eq!(web.environment["PRICE"], "$5");
}

#[test]
fn dotenv_values_are_interpolated() {
    let fx = Fx::with("services: {web: {image: \"${IMAGE}\"}}\n").env("TAG", "2");
    fx.write(
        ".env",
        "REGISTRY=reg.example\nIMAGE=${REGISTRY}/app:${TAG:-1}\n",
    );
    assert_eq!(fx.ok().services["web"].image, "reg.example/app:2");
}

#[test]
fn interpolated_typed_fields_are_cast() {
    // compose-go casts interpolated strings back to the schema's type
    // (interpolateTypeCastMapping): `replicas: ${N}` is a number, `read_only: ${RO}` a bool.
    let cases = [
        ("deploy: {replicas: \"${V}\"}", "3"),
        ("healthcheck: {test: [CMD, x], retries: \"${V}\"}", "3"),
        ("read_only: \"${V}\"", "true"),
        ("pids_limit: \"${V}\"", "3"),
        ("ports: [{target: \"${V}\"}]", "3"),
    ];
    let mut failures = Vec::new();
    for (field, value) in cases {
        let fx = Fx::with(&format!(
            "services:\n  web:\n    image: nginx\n    {field}\n"
        ))
        .env("V", value);
        match fx.load() {
            Ok(p) => {
                let web = &p.services["web"];
                let ok = match field.split(':').next().unwrap() {
                    "deploy" => web.replicas == 3,
                    "healthcheck" => web.healthcheck.as_ref().unwrap().retries == Some(3),
                    "read_only" => web.read_only,
                    "pids_limit" => web.pids_limit == Some(3),
                    _ => web.ports.first().map(|p| p.target) == Some(3),
                };
                if !ok {
                    failures.push(format!("{field}: wrong value"));
                }
            }
            Err(e) => failures.push(format!("{field} with V={value}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// env_file and environment.

#[test]
fn env_file_is_relative_to_the_project_dir_in_list_and_long_forms() {
    let mut fx = Fx::new().env("HOST", "db").env("INHERIT", "inherited");
    fx.write(
        "compose.yaml",
        r#"
services:
  web:
    image: nginx
    env_file:
      - conf/a.env
      - path: ./b.env
        required: true
      - path: missing.env
        required: false
  worker:
    image: nginx
    env_file: b.env
"#,
    );
    fx.write("conf/a.env", "A=from_a\nSHARED=a\nURL=http://${HOST}:80\n");
    fx.write("b.env", "SHARED=b\nINHERIT\nUNSET_BARE\n");
    // Loaded from elsewhere: relative env_file paths still resolve against the project dir.
    fx.opts.working_dir = fx.root().to_path_buf();
    fx.opts.files = vec![PathBuf::from("proj/compose.yaml")];
    let p = fx.ok();
    let env = &p.services["web"].environment;
    assert_eq!(env["A"], "from_a");
    assert_eq!(env["SHARED"], "b", "later env files win");
    assert_eq!(env["URL"], "http://db:80");
    assert_eq!(env["INHERIT"], "inherited", "bare key inherits");
    assert!(!env.contains_key("UNSET_BARE"), "{env:?}");
    assert_eq!(p.services["worker"].environment["SHARED"], "b");
}

#[test]
fn missing_required_env_file_is_an_error_naming_the_path() {
    let fx = Fx::with("services: {web: {image: nginx, env_file: [nope.env]}}\n");
    let e = fx.err();
    match &e {
        ComposeError::EnvFileMissing { service, path } => {
            assert_eq!(service, "web");
            assert_eq!(path, &fx.dir.join("nope.env"));
        }
        other => panic!("expected EnvFileMissing, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("nope.env") && text.contains("services.web.env_file"),
        "{text}"
    );
}

#[test]
fn env_file_raw_format_takes_lines_verbatim() {
    let fx =
        Fx::with("services: {web: {image: nginx, env_file: [{path: raw.env, format: raw}]}}\n")
            .env("B", "interpolated");
    fx.write("raw.env", "A=${B}\nQ=\"quoted\"\n# comment\nC=x y\n");
    let env = &fx.ok().services["web"].environment;
    assert_eq!(env["A"], "${B}");
    assert_eq!(env["Q"], "\"quoted\"");
    assert_eq!(env["C"], "x y");
    assert_eq!(env.len(), 3, "{env:?}");
}

#[test]
fn environment_overrides_env_file_and_bare_names_inherit_or_vanish() {
    let fx = Fx::with(
        r#"
services:
  web:
    image: nginx
    env_file: [f.env]
    environment:
      - A=override
      - C
      - E
      - NUM=1
"#,
    )
    .env("C", "from-env");
    fx.write("f.env", "A=file\nD=file\n");
    let env = &fx.ok().services["web"].environment;
    assert_eq!(env["A"], "override");
    assert_eq!(env["C"], "from-env");
    assert_eq!(env["D"], "file");
    assert_eq!(env["NUM"], "1");
    assert!(
        !env.contains_key("E"),
        "unset bare name must be dropped: {env:?}"
    );

    // Map form, with non-string scalars and a null.
    let fx = Fx::with(
        "services: {web: {image: nginx, environment: {PORT: 8080, DEBUG: true, HOMEY: null}}}\n",
    )
    .env("HOMEY", "h");
    let env = &fx.ok().services["web"].environment;
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["DEBUG"], "true");
    assert_eq!(env["HOMEY"], "h");
}

#[test]
fn env_file_errors_do_not_leak_the_value() {
    let secret = "hunter2-s3cr3t";
    for content in [
        format!("PASSWORD=\"{secret}\n"),            // unterminated quote
        format!("PASSWORD={secret}${{\n"),           // invalid interpolation
        format!("OK=1\nPASSWORD='{secret}' junk\n"), // text after the closing quote
    ] {
        let fx = Fx::with("services: {web: {image: nginx, env_file: [s.env]}}\n");
        fx.write("s.env", &content);
        let e = fx.err();
        assert!(matches!(e, ComposeError::EnvFile { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("s.env"), "{text}");
        assert!(!text.contains(secret), "error leaks the value: {text}");
        assert!(
            !format!("{e:?}").contains(secret),
            "debug leaks the value: {e:?}"
        );
    }
}

#[test]
fn env_file_line_without_equals_does_not_leak_the_value() {
    // A forgotten `=` (`PASSWORD hunter2`) is the likeliest typo on a secret line.
    let secret = "hunter2s3cr3t";
    let fx = Fx::with("services: {web: {image: nginx, env_file: [s.env]}}\n");
    fx.write("s.env", &format!("PASSWORD {secret}\n"));
    let e = fx.err();
    let text = crate::report::chain(&e);
    assert!(!text.contains(secret), "error leaks the value: {text}");
}

#[test]
fn dotenv_errors_do_not_leak_the_value() {
    let fx = Fx::with("services: {web: {image: nginx}}\n");
    fx.write(".env", "TOKEN=\"abc-secret-xyz\n");
    let e = fx.err();
    assert!(matches!(e, ComposeError::EnvFile { .. }), "{e:?}");
    let text = crate::report::chain(&e);
    assert!(!text.contains("abc-secret-xyz"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Several files.

#[test]
fn multiple_files_merge_by_compose_rules() {
    let mut fx = Fx::new();
    fx.write(
        "base.yaml",
        r#"
services:
  web:
    image: app:1
    command: [serve, --old]
    environment: [A=1, B=2]
    ports: ["80:80"]
    volumes: ["./a:/data", "/cache"]
    healthcheck: {test: [CMD, "true"], interval: 5s, retries: 2}
    labels: {x: "1"}
"#,
    );
    fx.write(
        "override.yaml",
        r#"
services:
  web:
    image: app:2
    command: serve --new
    environment: {B: "3", C: "4"}
    ports: ["443:443"]
    volumes: ["./b:/data"]
    healthcheck: {retries: 5}
    labels: [y=2]
  worker:
    image: worker:1
"#,
    );
    fx.opts.files = vec!["base.yaml".into(), "override.yaml".into()];
    let p = fx.ok();
    let web = &p.services["web"];
    assert_eq!(web.image, "app:2");
    assert_eq!(web.command, Some(strings(&["serve", "--new"])));
    let env: Vec<(&str, &str)> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, vec![("A", "1"), ("B", "3"), ("C", "4")]);
    let targets: Vec<u16> = web.ports.iter().map(|p| p.target).collect();
    assert_eq!(targets, vec![80, 443]);
    assert_eq!(web.mounts.len(), 2, "{:?}", web.mounts);
    assert_eq!(web_mount(&p, "/data").source, Some(fx.in_dir("b")));
    assert!(web
        .mounts
        .iter()
        .any(|m| m.target == "/cache" && m.source.is_none()));
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, Some(strings(&["CMD", "true"])));
    assert_eq!(hc.interval_ns, Some(5 * SEC));
    assert_eq!(hc.retries, Some(5));
    assert_eq!(web.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(web.labels.get("y").map(String::as_str), Some("2"));
    assert_eq!(p.services["worker"].image, "worker:1");
    assert_eq!(p.config_files.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Profiles.

const PROFILED: &str = r#"
services:
  web: {image: web}
  debug: {image: dbg, profiles: [debug]}
  tools: {image: t, profiles: [tools, ops]}
"#;

fn names(p: &Project) -> Vec<&str> {
    p.services.keys().map(String::as_str).collect()
}

#[test]
fn only_services_without_profiles_are_enabled_by_default() {
    let p = Fx::with(PROFILED).ok();
    assert_eq!(names(&p), vec!["web"]);
    let mut disabled = p.disabled_services;
    disabled.sort();
    assert_eq!(disabled, vec!["debug", "tools"]);
}

#[test]
fn profiles_option_compose_profiles_and_star_enable_services() {
    let p = Fx::with(PROFILED).profiles(&["ops"]).ok();
    assert_eq!(names(&p), vec!["tools", "web"]);
    assert_eq!(p.disabled_services, vec!["debug"]);

    let p = Fx::with(PROFILED)
        .env("COMPOSE_PROFILES", "debug, other")
        .ok();
    assert_eq!(names(&p), vec!["debug", "web"]);

    let p = Fx::with(PROFILED).profiles(&["*"]).ok();
    assert_eq!(names(&p), vec!["debug", "tools", "web"]);
    assert!(p.disabled_services.is_empty());
}

#[test]
fn profile_flag_replaces_compose_profiles() {
    // compose-go WithDefaultProfiles: COMPOSE_PROFILES is the fallback when no --profile is given.
    let p = Fx::with(PROFILED)
        .env("COMPOSE_PROFILES", "debug")
        .profiles(&["ops"])
        .ok();
    assert_eq!(names(&p), vec!["tools", "web"]);
}

#[test]
fn required_dependency_on_a_disabled_service_is_an_error() {
    let yaml =
        "services:\n  web: {image: w, depends_on: [db]}\n  db: {image: d, profiles: [data]}\n";
    match Fx::with(yaml).err() {
        ComposeError::DisabledDependency {
            service,
            dependency,
        } => assert_eq!((service.as_str(), dependency.as_str()), ("web", "db")),
        other => panic!("expected DisabledDependency, got {other:?}"),
    }
    let fx = Fx::with(yaml).profiles(&["data"]);
    assert_eq!(names(&fx.ok()), vec!["db", "web"]);
}

#[test]
fn optional_dependency_on_an_unknown_service_is_dropped_with_a_warning() {
    let p = Fx::with(
        "services:\n  web:\n    image: w\n    depends_on:\n      ghost: {condition: service_started, required: false}\n",
    )
    .ok();
    assert!(p.services["web"].depends_on.is_empty());
    assert_warns(&p, "ghost");
}

// ---------------------------------------------------------------------------------------------
// depends_on.

#[test]
fn depends_on_short_and_long_forms() {
    let p = Fx::with(
        r#"
services:
  db: {image: d}
  cache: {image: c}
  migrate: {image: m}
  web: {image: w, depends_on: [db, cache]}
  api:
    image: a
    depends_on:
      db: {condition: service_healthy, restart: true}
      migrate: {condition: service_completed_successfully}
"#,
    )
    .ok();
    let web = &p.services["web"].depends_on;
    assert_eq!(web.keys().collect::<Vec<_>>(), vec!["db", "cache"]);
    for d in web.values() {
        assert_eq!(d.condition, DependencyCondition::ServiceStarted);
        assert!(d.required);
        assert!(!d.restart);
    }
    let api = &p.services["api"].depends_on;
    assert_eq!(api["db"].condition, DependencyCondition::ServiceHealthy);
    assert!(api["db"].restart);
    assert_eq!(
        api["migrate"].condition,
        DependencyCondition::ServiceCompletedSuccessfully
    );
}

#[test]
fn dependency_on_an_unknown_service_is_an_error() {
    match Fx::with("services: {web: {image: w, depends_on: [nope]}}\n").err() {
        ComposeError::UnknownDependency {
            service,
            dependency,
        } => assert_eq!((service.as_str(), dependency.as_str()), ("web", "nope")),
        other => panic!("expected UnknownDependency, got {other:?}"),
    }
}

#[test]
fn dependency_cycle_is_an_error_listing_the_cycle() {
    let e = Fx::with(
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n  d: {image: x, depends_on: [a]}\n",
    )
    .err();
    let ComposeError::Cycle { cycle } = &e else {
        panic!("expected Cycle, got {e:?}");
    };
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert_eq!(cycle.first(), cycle.last());
    for s in ["a", "b", "c"] {
        assert!(cycle.iter().any(|c| c == s), "{cycle:?}");
    }
    assert!(!cycle.iter().any(|c| c == "d"), "{cycle:?}");
    assert!(e.to_string().contains(" -> "), "{e}");
}

#[test]
fn unknown_dependency_condition_is_invalid() {
    let e = assert_invalid(
        "services:\n  db: {image: d}\n  web: {image: w, depends_on: {db: {condition: service_ready}}}\n",
        "services.web.depends_on.db.condition",
    );
    assert!(e.to_string().contains("service_ready"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Ports.

#[test]
fn short_ports_expand() {
    let ports = web_ports(
        r#"
      - "8000-8001:80-81"
      - "127.0.0.1:8080:80"
      - "[::1]:9090:90"
      - "53:53/udp"
      - 3000
      - "7000-7001"
      - "127.0.0.1::5000"
"#,
    );
    assert_eq!(
        ports,
        vec![
            port(80, Some("8000"), None, "tcp"),
            port(81, Some("8001"), None, "tcp"),
            port(80, Some("8080"), Some("127.0.0.1"), "tcp"),
            port(90, Some("9090"), Some("::1"), "tcp"),
            port(53, Some("53"), None, "udp"),
            port(3000, None, None, "tcp"),
            port(7000, None, None, "tcp"),
            port(7001, None, None, "tcp"),
            port(5000, None, Some("127.0.0.1"), "tcp"),
        ]
    );
}

#[test]
fn long_ports() {
    let ports = web_ports(
        r#"
      - {target: 80, published: "8080", host_ip: 127.0.0.1, protocol: udp, mode: host}
      - {target: 443}
      - {target: 81, published: 8081}
"#,
    );
    assert_eq!(
        ports,
        vec![
            port(80, Some("8080"), Some("127.0.0.1"), "udp"),
            port(443, None, None, "tcp"),
            port(81, Some("8081"), None, "tcp"),
        ]
    );
}

#[test]
fn bad_port_is_invalid_naming_its_index() {
    let e = assert_invalid(
        "services: {x: {image: nginx, ports: [\"80:80\", \"80:http\"]}}\n",
        "services.x.ports[1]",
    );
    assert!(e.to_string().contains("80:http"), "{e}");

    assert_invalid(
        "services: {x: {image: nginx, ports: [\"99999:80\"]}}\n",
        "services.x.ports[0]",
    );
}

// ---------------------------------------------------------------------------------------------
// Volumes.

#[test]
fn short_volumes_resolve_binds_and_named_volumes() {
    let fx = Fx::with(
        r#"
services:
  web:
    image: nginx
    volumes:
      - ./data:/data:ro
      - ../shared:/shared
      - ~/cfg:/cfg
      - data:/var/lib/data
      - ext:/ext
      - custom:/custom
      - /anon
volumes:
  data:
  ext: {external: true}
  custom: {name: my-vol}
"#,
    )
    .env("HOME", "/home/tester");
    let p = fx.ok();
    let by = |t: &str| web_mount(&p, t);
    let data = by("/data");
    assert_eq!(data.kind, MountKind::Bind);
    assert_eq!(data.source, Some(fx.in_dir("data")));
    assert!(data.read_only);
    assert!(data.create_host_path);
    assert_eq!(
        by("/shared").source.as_deref(),
        Some(fx.root().join("shared").to_str().unwrap())
    );
    assert_eq!(by("/cfg").source.as_deref(), Some("/home/tester/cfg"));
    assert_eq!(by("/cfg").kind, MountKind::Bind);
    let named = by("/var/lib/data");
    assert_eq!(named.kind, MountKind::Volume);
    assert_eq!(named.source.as_deref(), Some("proj_data"));
    assert!(!named.read_only);
    assert_eq!(by("/ext").source.as_deref(), Some("ext"));
    assert_eq!(by("/custom").source.as_deref(), Some("my-vol"));
    let anon = by("/anon");
    assert_eq!(
        (anon.kind, anon.source.as_deref()),
        (MountKind::Volume, None)
    );

    assert_eq!(p.volumes["data"].name, "proj_data");
    assert!(!p.volumes["data"].external);
    assert!(p.volumes["ext"].external);
    assert_eq!(p.volumes["custom"].name, "my-vol");
}

#[test]
fn undeclared_named_volume_is_invalid() {
    let e = assert_invalid(
        "services: {web: {image: nginx, volumes: [\"/a:/a\", \"cache:/cache\"]}}\n",
        "services.web.volumes[1]",
    );
    let text = e.to_string();
    assert!(
        text.contains("cache") && text.contains("not declared"),
        "{text}"
    );
}

#[test]
fn tmpfs_and_long_volume_syntax() {
    let fx = Fx::with(
        r#"
services:
  web:
    image: nginx
    tmpfs: [/run]
    volumes:
      - {type: bind, source: ./conf, target: /etc/conf, read_only: true}
      - {type: volume, source: data, target: /data, volume: {nocopy: true}}
      - {type: volume, target: /anon}
      - {type: tmpfs, target: /cache, tmpfs: {size: 10m}}
  single:
    image: nginx
    tmpfs: /tmp
volumes:
  data: {}
"#,
    );
    let p = fx.ok();
    let by = |t: &str| web_mount(&p, t);
    let conf = by("/etc/conf");
    assert_eq!(conf.kind, MountKind::Bind);
    assert_eq!(conf.source, Some(fx.in_dir("conf")));
    assert!(conf.read_only);
    let data = by("/data");
    assert_eq!(
        (data.kind, data.source.as_deref()),
        (MountKind::Volume, Some("proj_data"))
    );
    assert!(data.nocopy);
    assert_eq!(by("/anon").source, None);
    let cache = by("/cache");
    assert_eq!(cache.kind, MountKind::Tmpfs);
    assert_eq!(cache.tmpfs_size, Some(10 * MIB));
    let run = by("/run");
    assert_eq!((run.kind, run.source.as_deref()), (MountKind::Tmpfs, None));
    let single = &p.services["single"].mounts;
    assert_eq!(single.len(), 1);
    assert_eq!(
        (single[0].kind, single[0].target.as_str()),
        (MountKind::Tmpfs, "/tmp")
    );

    assert_invalid(
        "services: {web: {image: nginx, volumes: [{type: volume, source: undeclared, target: /x}]}}\n",
        "services.web.volumes[0]",
    );
}

#[test]
fn tmpfs_short_syntax_keeps_its_size_option() {
    // `tmpfs: /tmp:size=64m` is HostConfig.Tmpfs {"/tmp": "size=64m"} in compose: the limit applies.
    let p = Fx::with("services: {web: {image: nginx, tmpfs: [\"/tmp:size=64m\"]}}\n").ok();
    let m = &p.services["web"].mounts;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].target, "/tmp");
    assert_eq!(
        m[0].tmpfs_size,
        Some(64 * MIB),
        "size option dropped: {:?}",
        m[0]
    );
}

#[test]
fn legacy_external_name_is_honoured() {
    // compose-go: `external: {name: x}` is deprecated but still means name: x, external: true.
    let p = Fx::with(
        r#"
services:
  web: {image: nginx, volumes: ["data:/data"], networks: [net]}
volumes:
  data: {external: {name: real-vol}}
networks:
  net: {external: {name: real-net}}
"#,
    )
    .ok();
    assert!(p.volumes["data"].external);
    assert_eq!(p.volumes["data"].name, "real-vol");
    assert_eq!(p.networks["net"].name, "real-net");
    assert_eq!(
        p.services["web"].mounts[0].source.as_deref(),
        Some("real-vol")
    );
}

// ---------------------------------------------------------------------------------------------
// Networks.

#[test]
fn default_network_when_none_is_set() {
    let p = Fx::with("services: {web: {image: nginx}, db: {image: pg}}\n").ok();
    assert_eq!(
        p.services["web"].networks.keys().collect::<Vec<_>>(),
        vec!["default"]
    );
    assert_eq!(p.services["web"].networks["default"].name, "proj_default");
    assert_eq!(p.networks.keys().collect::<Vec<_>>(), vec!["default"]);
    assert_eq!(p.networks["default"].name, "proj_default");
    assert!(!p.networks["default"].external);
}

#[test]
fn custom_and_external_networks_and_only_used_ones_listed() {
    let p = Fx::with(
        r#"
services:
  web: {image: nginx, networks: [front, shared]}
  db:
    image: pg
    networks:
      back: {aliases: [database], ipv4_address: 172.20.0.5}
  off: {image: x, profiles: [never], networks: [unused_by_enabled]}
networks:
  front: {}
  back: {driver: bridge, internal: true}
  unused: {}
  unused_by_enabled: {}
  shared: {external: true}
"#,
    )
    .ok();
    assert_eq!(
        p.networks.keys().collect::<Vec<_>>(),
        vec!["back", "front", "shared"]
    );
    assert_eq!(p.networks["front"].name, "proj_front");
    assert_eq!(p.networks["back"].name, "proj_back");
    assert!(p.networks["back"].internal);
    assert_eq!(p.networks["back"].driver.as_deref(), Some("bridge"));
    assert_eq!(p.networks["shared"].name, "shared");
    assert!(p.networks["shared"].external);
    let web = &p.services["web"].networks;
    assert_eq!(web["front"].name, "proj_front");
    assert_eq!(web["shared"].name, "shared");
    assert!(!web.contains_key("default"));
    let db = &p.services["db"].networks["back"];
    assert_eq!(db.aliases, strings(&["database"]));
    assert_eq!(db.ipv4_address.as_deref(), Some("172.20.0.5"));
}

#[test]
fn default_network_can_be_renamed() {
    let p = Fx::with("services: {web: {image: nginx}}\nnetworks: {default: {name: my-net}}\n").ok();
    assert_eq!(p.services["web"].networks["default"].name, "my-net");
    assert_eq!(p.networks["default"].name, "my-net");
}

#[test]
fn undeclared_network_is_an_error() {
    assert_invalid(
        "services: {web: {image: nginx, networks: [nope]}}\n",
        "services.web.networks.nope",
    );
}

// ---------------------------------------------------------------------------------------------
// Healthcheck.

#[test]
fn healthcheck_forms_and_durations() {
    let p = Fx::with(
        r#"
services:
  shell:
    image: x
    healthcheck:
      test: curl -f http://localhost
      interval: 1m30s
      timeout: 10s
      start_period: 500ms
      start_interval: 2s
      retries: 3
  list:
    image: x
    healthcheck: {test: [CMD, pg_isready, -U, pg]}
  off:
    image: x
    healthcheck: {test: [CMD, x], disable: true}
  none:
    image: x
    healthcheck: {test: [NONE]}
  plain:
    image: x
"#,
    )
    .ok();
    let s = p.services["shell"].healthcheck.as_ref().unwrap();
    assert_eq!(
        s.test,
        Some(strings(&["CMD-SHELL", "curl -f http://localhost"]))
    );
    assert_eq!(s.interval_ns, Some(90 * SEC));
    assert_eq!(s.timeout_ns, Some(10 * SEC));
    assert_eq!(s.start_period_ns, Some(500_000_000));
    assert_eq!(s.start_interval_ns, Some(2 * SEC));
    assert_eq!(s.retries, Some(3));
    assert!(!s.disabled);
    let l = p.services["list"].healthcheck.as_ref().unwrap();
    assert_eq!(l.test, Some(strings(&["CMD", "pg_isready", "-U", "pg"])));
    assert_eq!(l.interval_ns, None);
    let off = &p.services["off"];
    assert!(off.health_disabled());
    assert_eq!(
        off.healthcheck.as_ref().unwrap().test,
        Some(strings(&["NONE"]))
    );
    assert!(p.services["none"].health_disabled());
    assert!(p.services["plain"].healthcheck.is_none());
    assert!(!p.services["plain"].health_disabled());
}

#[test]
fn healthcheck_bad_list_head_or_duration_is_invalid() {
    assert_invalid(
        "services: {web: {image: x, healthcheck: {test: [echo, hi]}}}\n",
        "services.web.healthcheck.test",
    );
    assert_invalid(
        "services: {web: {image: x, healthcheck: {test: [CMD]}}}\n",
        "services.web.healthcheck.test",
    );
    assert_invalid(
        "services: {web: {image: x, healthcheck: {test: [CMD, x], interval: soon}}}\n",
        "services.web.healthcheck.interval",
    );
}

// ---------------------------------------------------------------------------------------------
// Keys berth refuses, ignores or warns about.

#[test]
fn build_without_image_is_an_error() {
    match Fx::with("services: {web: {build: .}}\n").err() {
        ComposeError::Build { service } => assert_eq!(service, "web"),
        other => panic!("expected Build, got {other:?}"),
    }
}

#[test]
fn build_with_image_warns_and_loads() {
    let p = Fx::with("services: {web: {build: {context: .}, image: reg/app:1}}\n").ok();
    assert_eq!(p.services["web"].image, "reg/app:1");
    assert_warns(&p, "services.web.build");
}

#[test]
fn unsupported_key_is_an_error_naming_the_field() {
    let e = Fx::with("services: {x: {image: nginx, runtime: runc}}\n").err();
    match &e {
        ComposeError::Unsupported { field } => assert_eq!(field, "services.x.runtime"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(e.to_string().contains("services.x.runtime"), "{e}");
    let e = Fx::with("services: {x: {image: nginx}}\nmodels: {m: {model: x}}\n").err();
    assert!(matches!(e, ComposeError::Unsupported { field } if field == "models"));
}

#[test]
fn unknown_keys_and_version_warn_and_x_keys_are_silent() {
    let p =
        Fx::with("version: \"3.8\"\nservices:\n  web: {image: nginx, colour: red}\nmystery: 1\n")
            .ok();
    assert_eq!(p.services["web"].image, "nginx");
    assert_warns(&p, "services.web.colour");
    assert_warns(&p, "version");
    assert_warns(&p, "mystery");

    let p = Fx::with(
        "x-meta: {owner: me}\nservices:\n  web: {image: nginx, x-note: hi, deploy: {x-extra: 1}}\n",
    )
    .ok();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

// ---------------------------------------------------------------------------------------------
// restart and deploy.

#[test]
fn restart_values() {
    let p = Fx::with(
        r#"
services:
  a: {image: x, restart: no}
  b: {image: x, restart: always}
  c: {image: x, restart: unless-stopped}
  d: {image: x, restart: "on-failure:3"}
  e: {image: x, restart: on-failure}
  f: {image: x}
"#,
    )
    .ok();
    let r = |s: &str| p.services[s].restart.clone();
    assert_eq!(r("a"), Some(("no".into(), 0)));
    assert_eq!(r("b"), Some(("always".into(), 0)));
    assert_eq!(r("c"), Some(("unless-stopped".into(), 0)));
    assert_eq!(r("d"), Some(("on-failure".into(), 3)));
    assert_eq!(r("e"), Some(("on-failure".into(), 0)));
    assert_eq!(r("f"), None);
}

#[test]
fn deploy_restart_policy_maps_to_docker_names() {
    let p = Fx::with(
        r#"
services:
  any: {image: x, deploy: {restart_policy: {condition: any}}}
  none: {image: x, deploy: {restart_policy: {condition: none}}}
  fail: {image: x, deploy: {restart_policy: {condition: on-failure, max_attempts: 5}}}
  bare: {image: x, deploy: {restart_policy: {}}}
  both: {image: x, restart: unless-stopped, deploy: {restart_policy: {condition: none}}}
"#,
    )
    .ok();
    let r = |s: &str| p.services[s].restart.clone();
    assert_eq!(r("any"), Some(("always".into(), 0)));
    assert_eq!(r("none"), Some(("no".into(), 0)));
    assert_eq!(r("fail"), Some(("on-failure".into(), 5)));
    assert_eq!(r("bare"), Some(("always".into(), 0)));
    assert_eq!(r("both"), Some(("unless-stopped".into(), 0)));
}

#[test]
fn invalid_restart_is_invalid() {
    assert_invalid(
        "services: {web: {image: x, restart: sometimes}}\n",
        "services.web.restart",
    );
    assert_invalid(
        "services: {web: {image: x, restart: \"on-failure:many\"}}\n",
        "services.web.restart",
    );
    assert_invalid(
        "services: {web: {image: x, deploy: {restart_policy: {condition: maybe}}}}\n",
        "services.web.deploy.restart_policy.condition",
    );
}

#[test]
fn resources_limits_and_stop_grace_period() {
    let p = Fx::with(
        r#"
services:
  top:
    image: x
    mem_limit: 512m
    cpus: 1.5
    pids_limit: 100
    shm_size: 64m
    stop_grace_period: 1m30s
  deployed:
    image: x
    stop_grace_period: 500ms
    deploy:
      replicas: 2
      resources:
        limits: {cpus: "0.25", memory: 256M, pids: 50}
"#,
    )
    .ok();
    let top = &p.services["top"];
    assert_eq!(top.memory, Some(512 * MIB));
    assert_eq!(top.nano_cpus, Some(1_500_000_000));
    assert_eq!(top.pids_limit, Some(100));
    assert_eq!(top.shm_size, Some(64 * MIB));
    assert_eq!(top.stop_grace_period_secs, Some(90));
    assert_eq!(top.replicas, 1);
    let d = &p.services["deployed"];
    assert_eq!(d.memory, Some(256 * MIB));
    assert_eq!(d.nano_cpus, Some(250_000_000));
    assert_eq!(d.pids_limit, Some(50));
    assert_eq!(d.stop_grace_period_secs, Some(0));
    assert_eq!(d.replicas, 2);

    assert_invalid(
        "services: {web: {image: x, mem_limit: lots}}\n",
        "services.web.mem_limit",
    );
}

#[test]
fn command_is_shell_split_and_empty_entrypoint_is_kept() {
    let p = Fx::with(
        r#"
services:
  a: {image: x, command: sh -c "echo hi", entrypoint: []}
  b: {image: x, command: [sh, -c, "echo hi"], entrypoint: /docker-entrypoint.sh}
  c: {image: x}
"#,
    )
    .ok();
    let a = &p.services["a"];
    assert_eq!(a.command, Some(strings(&["sh", "-c", "echo hi"])));
    assert_eq!(a.entrypoint, Some(vec![]));
    let b = &p.services["b"];
    assert_eq!(b.command, Some(strings(&["sh", "-c", "echo hi"])));
    assert_eq!(b.entrypoint, Some(strings(&["/docker-entrypoint.sh"])));
    assert_eq!(p.services["c"].command, None);
    assert_eq!(p.services["c"].entrypoint, None);

    assert_invalid(
        "services: {web: {image: x, command: \"echo 'unterminated\"}}\n",
        "services.web.command",
    );
}

#[test]
fn missing_image_is_invalid() {
    assert_invalid("services: {web: {command: [x]}}\n", "services.web.image");
}

// ---------------------------------------------------------------------------------------------
// Config hash.

const TWINS: &str = r#"
services:
  a: &svc
    image: app:1
    environment: {A: "1", B: "2"}
    ports: ["80"]
    volumes: ["./d:/d"]
    healthcheck: {test: [CMD, x]}
  b: *svc
"#;

#[test]
fn identical_services_have_the_same_config_hash() {
    let p = Fx::with(TWINS).ok();
    let (a, b) = (&p.services["a"], &p.services["b"]);
    assert_eq!(a.config_hash(), b.config_hash());
    assert_eq!(a.field_digests(), b.field_digests());
    assert_eq!(a.config_hash().len(), 64);
    // Digests only: no value reaches them.
    assert!(a.field_digests().values().all(|d| !d.contains("app:1")));
}

#[test]
fn changing_an_env_value_changes_only_the_environment_digest() {
    let p = Fx::with(
        "services:\n  a: {image: app:1, environment: {A: \"1\"}}\n  b: {image: app:1, environment: {A: \"2\"}}\n",
    )
    .ok();
    let (a, b) = (&p.services["a"], &p.services["b"]);
    assert_ne!(a.config_hash(), b.config_hash());
    let (da, db) = (a.field_digests(), b.field_digests());
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>());
    let differing: Vec<&String> = da.keys().filter(|k| da[*k] != db[*k]).collect();
    assert_eq!(differing, vec!["environment"]);
}

#[test]
fn replicas_do_not_change_the_config_hash() {
    let p = Fx::with(
        "services:\n  a: {image: app:1, deploy: {replicas: 1}}\n  b: {image: app:1, deploy: {replicas: 3}}\n  c: {image: app:1, scale: 2, depends_on: [a]}\n",
    )
    .ok();
    let (a, b, c) = (&p.services["a"], &p.services["b"], &p.services["c"]);
    assert_eq!((a.replicas, b.replicas, c.replicas), (1, 3, 2));
    assert_eq!(a.config_hash(), b.config_hash());
    assert_eq!(a.config_hash(), c.config_hash());
    assert!(!a.field_digests().contains_key("replicas"));
}

// ---------------------------------------------------------------------------------------------
// extra_hosts and dns, as compose-go reads them.

#[test]
fn extra_hosts_give_one_entry_per_address_in_every_form() {
    let fx = Fx::with(
        "services:\n  web:\n    image: nginx\n    extra_hosts: [\"db=10.0.0.5,10.0.0.6\", \"cache:10.0.0.7\", \"v6:::1\"]\n  api:\n    image: nginx\n    extra_hosts:\n      db: [10.0.0.5, 10.0.0.6]\n      cache: 10.0.0.7\n",
    );
    let p = fx.ok();
    assert_eq!(
        p.services["web"].extra_hosts,
        ["db:10.0.0.5", "db:10.0.0.6", "cache:10.0.0.7", "v6:::1"]
    );
    assert_eq!(
        p.services["api"].extra_hosts,
        ["db:10.0.0.5", "db:10.0.0.6", "cache:10.0.0.7"]
    );
}

#[test]
fn an_empty_dns_entry_is_no_nameserver() {
    let fx = Fx::with("services:\n  web:\n    image: nginx\n    dns: ${UNSET_DNS}\n    dns_search: ${UNSET_SEARCH:-}\n");
    let p = fx.ok();
    assert!(
        p.services["web"].dns.is_empty(),
        "{:?}",
        p.services["web"].dns
    );
    // compose keeps an empty search domain (Docker ignores it).
    assert_eq!(p.services["web"].dns_search, [""]);
}

#[test]
fn only_mounted_volumes_are_the_projects_and_a_bind_device_is_made_absolute() {
    let fx = Fx::with(
        "services:\n  web:\n    image: nginx\n    volumes: [state:/state]\nvolumes:\n  state:\n    driver_opts: {type: none, o: bind, device: ./state}\n  unused: {}\n  gone:\n    external: true\n",
    );
    let p = fx.ok();
    // compose creates only what a service mounts; an unused external one need not exist.
    assert_eq!(p.volumes.keys().collect::<Vec<_>>(), ["state"]);
    assert_eq!(p.volumes["state"].driver_opts["device"], fx.in_dir("state"));
}

#[test]
fn what_docker_cannot_reserve_or_set_is_refused_by_name_never_dropped() {
    let refused = |service_yaml: &str, field: &str| {
        let fx = Fx::with(&format!(
            "services:\n  web:\n    image: nginx\n{service_yaml}networks:\n  front: {{}}\n  back: {{}}\n"
        ));
        let text = crate::report::chain(&fx.err());
        assert!(text.contains(field), "{field}: {text}");
    };
    refused(
        "    deploy:\n      resources:\n        reservations:\n          cpus: '0.5'\n",
        "deploy.resources.reservations.cpus",
    );
    refused(
        "    deploy:\n      resources:\n        reservations:\n          devices: [{capabilities: [gpu], count: some}]\n",
        "deploy.resources.reservations.devices[0].count",
    );
    refused("    gpus: most\n", "services.web.gpus");
    refused(
        "    deploy:\n      resources:\n        reservations:\n          pids: 3\n",
        "reservations",
    );
    refused(
        "    networks:\n      front:\n        gw_priority: 1\n",
        "networks.front.gw_priority",
    );
    refused(
        "    networks:\n      front:\n        interface_name: eth9\n",
        "networks.front.interface_name",
    );
    // berth creates the container on its first network: only that one may take a MAC address.
    refused(
        "    networks:\n      back: {}\n      front:\n        mac_address: 02:42:ac:11:00:42\n",
        "networks.front.mac_address",
    );
    refused(
        "    healthcheck:\n      test: [CMD, 'true']\n      intervall: 5s\n",
        "intervall",
    );
}

#[test]
fn memory_reservations_are_kept_in_both_forms() {
    let fx = Fx::with(
        "services:\n  a:\n    image: nginx\n    mem_reservation: 64m\n  b:\n    image: nginx\n    deploy:\n      resources:\n        reservations:\n          memory: 32m\n",
    );
    let p = fx.ok();
    assert_eq!(p.services["a"].memory_reservation, Some(64 * MIB));
    assert_eq!(p.services["b"].memory_reservation, Some(32 * MIB));
}

#[test]
fn extends_in_a_circle_and_an_include_redefining_a_service_are_errors() {
    let fx = Fx::with(
        "services:\n  a:\n    image: nginx\n    extends: b\n  b:\n    image: nginx\n    extends: {service: a}\n",
    );
    let text = crate::report::chain(&fx.err());
    assert!(
        text.contains("circle") && text.contains("a (") && text.contains("b ("),
        "{text}"
    );

    let fx = Fx::with("include: [lib/compose.yaml]\nservices:\n  db:\n    image: nginx\n");
    fx.write(
        "lib/compose.yaml",
        "services:\n  db:\n    image: postgres\n",
    );
    let text = crate::report::chain(&fx.err());
    assert!(
        text.contains("services.db is defined both here and in"),
        "{text}"
    );

    let fx = Fx::with("services:\n  a:\n    image: nginx\n    extends: missing\n");
    let text = crate::report::chain(&fx.err());
    assert!(text.contains("\"missing\""), "{text}");
}

#[test]
fn secrets_and_configs_resolve_to_files_and_their_values_stay_out_of_debug() {
    let fx = Fx::with(
        "services:\n  web:\n    image: nginx\n    secrets: [token]\n    configs: [{source: conf, target: /etc/x.conf, mode: 0o600, uid: '7'}]\nsecrets:\n  token:\n    environment: TOKEN\nconfigs:\n  conf:\n    content: key=value\n",
    )
    .env("TOKEN", "s3cr3t-token");
    let p = fx.ok();
    let files = &p.services["web"].files;
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].target, "/run/secrets/token");
    assert_eq!((files[0].mode, files[0].uid), (0o400, 0));
    assert_eq!(files[0].content, b"s3cr3t-token");
    assert_eq!(
        (files[1].target.as_str(), files[1].mode, files[1].uid),
        ("/etc/x.conf", 0o600, 7)
    );
    let shown = format!("{:?} {}", files, serde_json::to_string(&p).unwrap());
    assert!(!shown.contains("s3cr3t"), "{shown}");

    let refused = |yaml: &str, needle: &str| {
        let text = crate::report::chain(&Fx::with(yaml).err());
        assert!(text.contains(needle), "{needle}: {text}");
    };
    refused(
        "services:\n  web:\n    image: nginx\n    secrets: [nope]\n",
        "\"nope\" is not declared in the top-level `secrets`",
    );
    refused(
        "services:\n  web:\n    image: nginx\nsecrets:\n  s:\n    environment: UNSET_TOKEN\n",
        "UNSET_TOKEN is not set",
    );
    refused(
        "services:\n  web:\n    image: nginx\nsecrets:\n  s:\n    external: true\n",
        "secrets.s.external",
    );
    refused(
        "services:\n  web:\n    image: nginx\nsecrets:\n  s:\n    content: inline\n",
        "content is for configs",
    );
    refused(
        "services:\n  web:\n    image: nginx\n    read_only: true\n    configs: [c]\nconfigs:\n  c:\n    content: x\n",
        "read-only root file system",
    );
}

#[test]
fn gpus_and_reserved_devices_become_device_requests_as_compose_makes_them() {
    let p = Fx::with(
        "services:\n  web:\n    image: nginx\n    gpus: all\n    deploy:\n      resources:\n        reservations:\n          devices:\n            - {driver: nvidia, count: 2, capabilities: [gpu, utility]}\n            - {device_ids: ['0'], capabilities: [gpu]}\n",
    )
    .ok();
    let r = &p.services["web"].device_requests;
    assert_eq!(r.len(), 3);
    assert_eq!(
        (r[0].count, r[0].capabilities.clone()),
        (-1, vec!["gpu".to_string()])
    );
    assert_eq!((r[1].driver.as_deref(), r[1].count), (Some("nvidia"), 2));
    assert_eq!(
        (r[2].count, r[2].device_ids.clone()),
        (0, vec!["0".to_string()])
    );
}

#[test]
fn an_unset_volume_source_says_the_section_is_empty() {
    let text = crate::report::chain(
        &Fx::with("services:\n  web:\n    image: nginx\n    volumes: [\"${UNSET_FILE}:/x\"]\n")
            .err(),
    );
    assert!(text.contains("empty section between colons"), "{text}");
    assert!(!text.contains("is not declared"), "{text}");
}

#[test]
fn a_secret_at_a_berth_location_comes_from_what_the_agent_fetched() {
    let yaml = "services:\n  web:\n    image: nginx\n    secrets: [s]\nsecrets:\n  s:\n    file: s3://bucket/key\n";
    let text = crate::report::chain(&Fx::with(yaml).err());
    assert!(text.contains("berth up reads local files only"), "{text}");
    let mut fx = Fx::with(yaml);
    fx.opts
        .remote_sources
        .0
        .insert("s3://bucket/key".into(), b"fetched".to_vec());
    assert_eq!(fx.ok().services["web"].files[0].content, b"fetched");
    assert!(
        !format!("{:?}", fx.opts).contains("fetched\""),
        "{:?}",
        fx.opts
    );
}

#[test]
fn x_extensions_are_allowed_inside_fields_too() {
    let p = Fx::with(
        "services:\n  web:\n    image: nginx\n    healthcheck:\n      test: [CMD, 'true']\n      x-note: checked by ops\n    logging:\n      driver: json-file\n      x-owner: me\n",
    )
    .ok();
    assert!(p.services["web"].healthcheck.is_some());
}
