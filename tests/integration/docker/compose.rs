//! The Compose file. It cannot be started here (no engine); what it gives
//! its parts is checked instead: it parses, the parts are wired as
//! intended, the environment it sets for the gateway (interpolated from
//! `.env.example`) is one the image's entrypoint and `--print-config`
//! accept, and its Garage setup (`docker/garage-init.sh` with
//! `docker/garage.toml`) runs against a real Garage, twice, leaving a key
//! with which the gateway stores a study and signs URLs that download.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::*;
use crate::common::{self, Gateway, Opts};

/// Reads docker/compose.yaml with PyYAML and interpolates the gateway's
/// environment from docker/.env.example the way Compose does
/// (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`).
const COMPOSE_READER: &str = r##"
import json, re, sys, tomllib, yaml

compose = yaml.safe_load(open(sys.argv[1]))
dotenv = {}
for line in open(sys.argv[2]):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        dotenv[k.strip()] = v.strip()

def interpolate(text):
    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = dotenv.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise SystemExit(f"{name}: {arg}")
            return arg
        return value or ""
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, text)

env = compose["services"]["gateway"]["environment"]
if isinstance(env, list):
    env = dict(e.partition("=")[::2] for e in env)
print(json.dumps({
    "compose": compose,
    "gateway_env": {k: interpolate(str(v)) for k, v in env.items()},
    "garage_toml": tomllib.load(open(sys.argv[3], "rb")),
}))
"##;

#[test]
fn compose_file_wires_garage_and_gives_the_gateway_a_config_it_accepts() {
    let docker = common::repo().join("docker");
    for script in ["docker-entrypoint.sh", "garage-init.sh"] {
        common::assert_ok(
            &output(Command::new("sh").arg("-n").arg(docker.join(script))),
            &format!("sh -n docker/{script}"),
        );
    }
    let read = common::pydicom(
        COMPOSE_READER,
        &[
            docker.join("compose.yaml").to_str().unwrap(),
            docker.join(".env.example").to_str().unwrap(),
            docker.join("garage.toml").to_str().unwrap(),
        ],
    );
    let read: Value = serde_json::from_str(&read).unwrap();
    let compose = &read["compose"];
    let services = &compose["services"];
    let garage = &services["garage"];
    let init = &services["garage-init"];
    let gw = &services["gateway"];
    assert!(
        garage["image"]
            .as_str()
            .unwrap()
            .starts_with("dxflrs/garage:v2."),
        "{garage}"
    );
    assert_eq!(gw["build"]["dockerfile"], "docker/Dockerfile");
    assert_eq!(gw["build"]["context"], "..");
    // Start order: Garage healthy, then its setup done, then the gateway.
    assert_eq!(init["depends_on"]["garage"]["condition"], "service_healthy");
    assert_eq!(
        gw["depends_on"]["garage-init"]["condition"],
        "service_completed_successfully"
    );
    for (name, service) in [("garage", garage), ("gateway", gw)] {
        assert!(
            !strings(&service["healthcheck"]["test"]).is_empty(),
            "{name} has no health check"
        );
    }
    assert_eq!(
        strings(&gw["healthcheck"]["test"]),
        ["CMD", "docker-entrypoint.sh", "healthcheck"]
    );
    // Named volumes, and the gateway's data in one of them.
    let declared: BTreeSet<String> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for service in [garage, init, gw] {
        for v in strings(&service["volumes"]) {
            let source = v.split(':').next().unwrap();
            assert!(
                source.starts_with("./") || declared.contains(source),
                "volume {v} is neither a file of docker/ nor a named volume"
            );
        }
    }
    assert!(strings(&gw["volumes"]).contains(&"gateway-data:/data".to_owned()));
    // The key goes from garage-init to the gateway through one volume.
    let credentials_dir = init["environment"]["CREDENTIALS_DIR"].as_str().unwrap();
    assert!(strings(&init["volumes"]).contains(&format!("s3-credentials:{credentials_dir}")));
    assert!(strings(&gw["volumes"]).contains(&"s3-credentials:/run/s3-credentials:ro".to_owned()));
    assert_eq!(
        init["environment"]["CREDENTIALS_OWNER"],
        format!("{UID}:{UID}")
    );
    // No secret is written into the file or the example.
    let env = read["gateway_env"].as_object().unwrap();
    for secret in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "DICOM_GATEWAY_API_TOKEN",
        "AVARA_WEBHOOK_KEY",
    ] {
        assert!(
            !env.contains_key(secret),
            "{secret} is set in compose.yaml; secrets come from files"
        );
    }
    for file in [
        "AWS_ACCESS_KEY_ID_FILE",
        "AWS_SECRET_ACCESS_KEY_FILE",
        "DICOM_GATEWAY_API_TOKEN_FILE",
        "DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE",
    ] {
        assert!(
            env.contains_key(file),
            "no {file} in the gateway's environment"
        );
    }
    // Garage and the gateway agree on region, port and bucket.
    let toml = &read["garage_toml"];
    assert_eq!(
        env["DICOM_GATEWAY_STORAGE_REGION"],
        toml["s3_api"]["s3_region"]
    );
    let s3_port = toml["s3_api"]["api_bind_addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(
        env["DICOM_GATEWAY_STORAGE_ENDPOINT"],
        format!("http://garage:{s3_port}")
    );
    assert_eq!(toml["rpc_public_addr"], "garage:3901");

    // The environment, in the image, with the files Compose would mount:
    // the entrypoint and `--print-config` accept it.
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("s3-credentials");
    std::fs::create_dir(&creds).unwrap();
    let key_id = "GK0123456789abcdef01234567";
    let secret = "6d1f0a9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
    secret_file(&creds, "access_key_id", key_id);
    secret_file(&creds, "secret_access_key", secret);
    let token = "0123456789abcdef0123456789abcdef";
    let mut volumes = vec![format!("{}:/run/s3-credentials:ro", creds.display())];
    for (name, value) in [("avara_webhook_key", KEY), ("api_token", token)] {
        let file = secret_file(tmp.path(), name, value);
        volumes.push(format!("{}:/run/secrets/{name}:ro", file.display()));
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let mut image = Image::build();
    let ctr = image.container();
    let user = image.user();
    let mut argv = strings(&image.config["Entrypoint"]);
    argv.push("--print-config".into());
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &env, &volumes, &argv),
        "the compose environment with --print-config",
    );
    for expected in [
        "url = \"s3://dicom\"",
        "endpoint = \"http://garage:3900\"",
        "region = \"garage\"",
        "allow_http = true",
        "data_dir = \"/data\"",
        "dicom_listen = \"0.0.0.0:11112\"",
        "http_listen = \"0.0.0.0:8080\"",
        "api_token = \"<redacted>\"",
        "allowed_calling_aets = []",
        &format!("AWS_ACCESS_KEY_ID={key_id}"),
        "AWS_SECRET_ACCESS_KEY=<redacted>",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    for secret in [secret, token, KEY] {
        assert!(!printed.contains(secret), "a secret printed:\n{printed}");
    }
}

/// Garage's `garage`, installed by scripts/test.sh; a missing one fails.
fn garage_binary() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    let path = home.join("bin/garage");
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs Garage (cargo install garage)",
        path.display()
    );
    path
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A process killed (and reaped) when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn garage_init_sets_up_a_real_garage_twice_and_the_gateway_stores_into_it() {
    let garage = garage_binary();
    let docker = common::repo().join("docker");

    // compose.yaml runs the Garage release tested here.
    let version = stdout_of(Command::new(&garage).arg("--version"), "garage --version");
    let version = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.strip_prefix("cargo:"))
        .unwrap_or_else(|| panic!("unexpected garage --version: {version}"));
    let compose = std::fs::read_to_string(docker.join("compose.yaml")).unwrap();
    let image = format!("dxflrs/garage:v{version}");
    assert_eq!(
        compose.matches(&image).count(),
        2,
        "compose.yaml's garage and garage-init should use {image}"
    );

    // docker/garage.toml, on loopback ports and temporary directories.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (rpc, s3, admin) = (free_port(), free_port(), free_port());
    let mut toml = std::fs::read_to_string(docker.join("garage.toml")).unwrap();
    for (from, to) in [
        (
            "\"/var/lib/garage/meta\"",
            format!("{:?}", dir.join("meta")),
        ),
        (
            "\"/var/lib/garage/data\"",
            format!("{:?}", dir.join("data")),
        ),
        (
            "rpc_bind_addr = \"[::]:3901\"",
            format!("rpc_bind_addr = \"127.0.0.1:{rpc}\""),
        ),
        (
            "rpc_public_addr = \"garage:3901\"",
            format!("rpc_public_addr = \"127.0.0.1:{rpc}\""),
        ),
        (
            "api_bind_addr = \"[::]:3900\"",
            format!("api_bind_addr = \"127.0.0.1:{s3}\""),
        ),
        (
            "api_bind_addr = \"[::]:3903\"",
            format!("api_bind_addr = \"127.0.0.1:{admin}\""),
        ),
    ] {
        assert_eq!(
            toml.matches(from).count(),
            1,
            "{from} in docker/garage.toml"
        );
        toml = toml.replace(from, &to);
    }
    let config = dir.join("garage.toml");
    std::fs::write(&config, toml).unwrap();
    let rpc_secret = random_hex(32);
    let server = Command::new(&garage)
        .arg("-c")
        .arg(&config)
        .arg("server")
        .env("GARAGE_RPC_SECRET", &rpc_secret)
        .env("GARAGE_ADMIN_TOKEN", random_hex(16))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("garage.log")).unwrap())
        .spawn()
        .expect("garage server");
    let _server = Killed(server);

    // garage-init.sh, as compose runs it (it waits for the node itself).
    let credentials = dir.join("credentials");
    let path = format!(
        "{}:{}",
        garage.parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let init = || {
        let out = output(
            Command::new("sh")
                .arg(docker.join("garage-init.sh"))
                .env("PATH", &path)
                .env("GARAGE_CONFIG", &config)
                .env("GARAGE_RPC_SECRET", &rpc_secret)
                .env("CREDENTIALS_DIR", &credentials)
                .env("CREDENTIALS_OWNER", format!("{UID}:{UID}")),
        );
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "garage-init.sh: {log}\ngarage's log:\n{}",
            std::fs::read_to_string(dir.join("garage.log")).unwrap_or_default()
        );
        log
    };
    let first = init();
    for step in [
        "assigning node",
        "creating key dicom-gateway",
        "creating bucket dicom",
    ] {
        assert!(first.contains(step), "{first}");
    }
    let second = init();
    for step in [
        "layout already has this node",
        "key dicom-gateway exists",
        "bucket dicom exists",
    ] {
        assert!(second.contains(step), "{second}");
    }
    let ready = |log: &str| {
        log.lines()
            .find(|l| l.contains("ready:"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        ready(&first),
        ready(&second),
        "the second run made another key"
    );
    for (path, mode) in [
        (credentials.clone(), 0o700),
        (credentials.join("access_key_id"), 0o400),
        (credentials.join("secret_access_key"), 0o400),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (UID, UID, mode),
            "{}",
            path.display()
        );
    }
    let read = |name: &str| {
        std::fs::read_to_string(credentials.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (key_id, secret) = (read("access_key_id"), read("secret_access_key"));
    assert!(!secret.is_empty() && !first.contains(&secret) && !second.contains(&secret));

    // The gateway with compose's storage settings and that key: a study
    // stored in Garage, and Avara's URLs, presigned for Garage, download.
    let gw = Gateway::start_with(
        Opts::default()
            .env("DICOM_GATEWAY_STORAGE", "s3://dicom")
            .env(
                "DICOM_GATEWAY_STORAGE_ENDPOINT",
                &format!("http://127.0.0.1:{s3}"),
            )
            .env("DICOM_GATEWAY_STORAGE_REGION", "garage")
            .env("DICOM_GATEWAY_STORAGE_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", &key_id)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("AVARA_WEBHOOK_KEY", KEY),
    );
    let (study, files, sops) = study1();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &refs), "storescu");
    // Acknowledged from the journal (the default): presigned store URLs
    // once the upload backlog drained into Garage.
    crate::common::s3::wait_until("the upload backlog drained into Garage", || {
        let (status, health) = gw.get_json("/healthz", None);
        status == 200 && health["upload_backlog"]["instances"] == 0
    });
    let event = serde_json::json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = common::avara_send(&gw, KEY, &event.to_string(), &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    let urls = strings(&answer["body"]["urls"]);
    assert_eq!(urls.len(), sops.len(), "{answer}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for url in &urls {
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{s3}/dicom/studies/")),
            "{url}"
        );
        let mut resp = agent.get(url).call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        assert_eq!(&body[128..132], b"DICM", "{url}");
    }
}
