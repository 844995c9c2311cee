//! The image, run: real peers talk to the image's entrypoint as its user
//! (DCMTK's echoscu and storescu, Avara's signed webhook, an HTTP client
//! fetching the signed URLs), the image's HEALTHCHECK runs inside the
//! container, and the image's stop signal is sent the way a container
//! runtime sends it (to the gateway process itself: `buildah run` kills its
//! child on SIGTERM instead of passing the signal on).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::*;
use crate::common::{self, Gateway};

#[test]
fn image_runs_as_its_user_serves_dicom_and_avara_keeps_data_under_data_and_stops_on_its_signal() {
    let mut image = Image::build();
    let cfg = image.config.clone();

    // What the image declares.
    let user = image.user();
    assert_eq!(user, format!("{UID}:{UID}"), "a numeric, non-root USER");
    let ports: BTreeSet<&str> = cfg["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ports, BTreeSet::from(["11112/tcp", "8080/tcp"]));
    assert!(cfg["Volumes"].get("/data").is_some(), "{cfg}");
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    let health = strings(&cfg["Healthcheck"]["Test"]);
    assert_eq!(
        health.first().map(String::as_str),
        Some("CMD"),
        "{health:?}"
    );
    assert!(
        health
            .iter()
            .all(|a| !a.contains("curl") && !a.contains("wget"))
    );
    let env = strings(&cfg["Env"]);
    assert!(
        env.contains(&"DICOM_GATEWAY_DATA_DIR=/data".to_owned()),
        "{env:?}"
    );
    for var in &env {
        let name = var.split('=').next().unwrap();
        assert!(
            !["KEY", "TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|s| name.contains(s)),
            "a secret baked into the image: {name}"
        );
    }

    let ctr = image.container();
    let mount = PathBuf::from(
        stdout_of(buildah().args(["mount", &ctr]), "buildah mount")
            .trim()
            .to_owned(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(UID), Some(UID)).unwrap();
    let key_file = secret_file(tmp.path(), "avara_webhook_key", KEY);
    let (dicom_port, http_port) = (free_port(), free_port());
    let env: Vec<(String, String)> = [
        (
            "DICOM_GATEWAY_DICOM_LISTEN",
            format!("0.0.0.0:{dicom_port}"),
        ),
        ("DICOM_GATEWAY_HTTP_LISTEN", format!("0.0.0.0:{http_port}")),
        (
            "DICOM_GATEWAY_PUBLIC_URL",
            format!("http://127.0.0.1:{http_port}"),
        ),
        (
            "DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE",
            "/run/secrets/avara_webhook_key".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let volumes = vec![
        format!("{}:/data", data.display()),
        format!("{}:/run/secrets/avara_webhook_key:ro", key_file.display()),
    ];

    let id = stdout_of(
        &mut run_in(&ctr, &user, &env, &volumes, &["id".into(), "-u".into()]),
        "id -u in the container",
    );
    assert_eq!(id.trim(), UID.to_string());
    // After a first run with the same volumes, so the mount points buildah
    // adds for them are there already.
    let rootfs_before = snapshot(&mount);

    let mut gateway = Running(
        run_in(&ctr, &user, &env, &volumes, &image.default_argv())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("buildah run"),
    );
    let log = Log::drain(gateway.0.stderr.take().unwrap());
    log.wait_for(&format!("service=\"dicom\" addr=0.0.0.0:{dicom_port}"));
    log.wait_for(&format!("service=\"http\" addr=0.0.0.0:{http_port}"));

    // C-ECHO and a C-STORE of a study, from DCMTK.
    let port = dicom_port.to_string();
    let dcmtk = |program: &str| {
        let mut cmd = Command::new(common::require(program));
        cmd.env("TCP_NODELAY", "1")
            .args(["-aet", "DCMTKSCU", "-aec", "DICOMGW"]);
        cmd
    };
    common::assert_ok(
        &output(dcmtk("/usr/bin/echoscu").args(["127.0.0.1", &port])),
        "echoscu",
    );
    let (study, files, sops) = study1();
    common::assert_ok(
        &output(
            dcmtk("/usr/bin/storescu")
                .args(["-xe", "127.0.0.1", &port])
                .args(&files),
        ),
        "storescu",
    );

    // Avara asks for the study: every URL downloads the instance it names.
    let event = json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = stdout_of(
        Command::new(common::python())
            .arg(common::repo().join("tests/peers/avara_sender.py"))
            .args([
                "--url",
                &format!("http://127.0.0.1:{http_port}/webhooks/avara"),
                "--key",
                KEY,
            ])
            .arg(event.to_string()),
        "avara_sender.py",
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    let urls = strings(&answer["body"]["urls"]);
    assert_eq!(urls.len(), sops.len(), "{answer}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let downloads = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{http_port}/files/")),
            "{url}"
        );
        let mut resp = agent.get(url).call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let path = downloads.path().join(format!("{n}.dcm"));
        std::fs::write(&path, resp.body_mut().read_to_vec().unwrap()).unwrap();
        paths.push(path.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let opened = common::pydicom(
        "import sys, pydicom\nfor f in sys.argv[1:]: print(pydicom.dcmread(f).SOPInstanceUID)",
        &args,
    );
    let got: BTreeSet<String> = opened.lines().map(str::to_owned).collect();
    assert_eq!(got, sops);

    // The image's HEALTHCHECK, run inside the container as a runtime runs it.
    let check = output(&mut run_in(&ctr, &user, &env, &volumes, &health[1..]));
    common::assert_ok(&check, "the image's HEALTHCHECK");
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains(&format!("http://127.0.0.1:{http_port}/healthz")),
        "{check:?}"
    );

    // The stop signal, to the gateway process itself (as `docker stop` sends
    // it to the container's first process): a clean exit.
    let pid = descendant_named(gateway.0.id(), "dicom-gateway");
    let signal = cfg["StopSignal"]
        .as_str()
        .unwrap()
        .trim_start_matches("SIG");
    let sent = output(Command::new("kill").args(["-s", signal, &pid.to_string()]));
    common::assert_ok(&sent, "kill");
    let status = gateway.0.wait().unwrap();
    log.wait_for("stopped");
    assert!(status.success(), "{status}:\n{}", log.text());

    // Everything written is under /data, owned by the image's user.
    let written = common::files_under(&data);
    let objects: Vec<_> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(objects.len(), sops.len(), "{written:?}");
    assert!(objects.iter().all(|p| p.starts_with(data.join("objects"))));
    assert!(data.join("url-signing-keys").exists(), "{written:?}");
    for path in &written {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, UID), "{}", path.display());
    }
    let rootfs_after = snapshot(&mount);
    let changed: Vec<_> = rootfs_before
        .iter()
        .filter(|(p, m)| rootfs_after.get(*p) != Some(m))
        .map(|(p, _)| p)
        .chain(
            rootfs_after
                .keys()
                .filter(|p| !rootfs_before.contains_key(*p)),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "written outside /data in the image's file system: {:?}",
        changed
            .iter()
            .map(|p| (p, rootfs_before.get(*p), rootfs_after.get(*p)))
            .collect::<Vec<_>>()
    );
}

/// `dicom-gateway healthcheck` against a real gateway: healthy while it
/// runs, with the address taken from the same settings; 1 once it stopped.
#[test]
fn healthcheck_subcommand_asks_the_running_gateway() {
    let mut gw = Gateway::start();
    let data_dir = gw.data_dir.clone();
    let check = |listen: String| {
        output(
            Command::new(env!("CARGO_BIN_EXE_dicom-gateway"))
                .arg("healthcheck")
                .env("DICOM_GATEWAY_HTTP_LISTEN", listen)
                .env("DICOM_GATEWAY_DATA_DIR", &data_dir),
        )
    };
    // A wildcard address, as in the image, is asked on loopback.
    let out = check(format!("0.0.0.0:{}", gw.http.port()));
    common::assert_ok(&out, "healthcheck");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("healthy: http://127.0.0.1:{}/healthz", gw.http.port())
    );
    assert!(gw.stop().success());
    let out = check(format!("0.0.0.0:{}", gw.http.port()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/healthz"),
        "{out:?}"
    );
}

/// The entrypoint: a TOML file mounted at the image's config path is read
/// (by the server and by the health check), its absence is no error, and a
/// secret given both as a variable and as a file is refused.

#[test]
fn entrypoint_reads_a_mounted_toml_and_refuses_a_secret_given_twice() {
    let mut image = Image::build();
    let ctr = image.container();
    let user = image.user();
    let entrypoint = strings(&image.config["Entrypoint"]);
    let argv = |args: &[&str]| -> Vec<String> {
        let mut argv = entrypoint.clone();
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    };
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("gateway.toml");
    let unused = free_port();
    std::fs::write(
        &toml,
        format!(
            "ae_title = \"TOMLGW\"\nallowed_calling_aets = [\"CT1\"]\nhttp_listen = \"0.0.0.0:{unused}\"\n"
        ),
    )
    .unwrap();
    let mounted = vec![format!(
        "{}:/etc/dicom-gateway/gateway.toml:ro",
        toml.display()
    )];

    // Flags alone reach the binary.
    let version = stdout_of(
        &mut run_in(&ctr, &user, &[], &[], &argv(&["--version"])),
        "--version",
    );
    assert!(version.starts_with("dicom-gateway "), "{version}");
    // No file: the defaults and the image's variables.
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &[], &[], &argv(&["--print-config"])),
        "--print-config without a file",
    );
    assert!(printed.contains("ae_title = \"DICOMGW\""), "{printed}");
    // The mounted file; a variable still wins over it.
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &[], &mounted, &argv(&["--print-config"])),
        "--print-config with the mounted file",
    );
    assert!(printed.contains("ae_title = \"TOMLGW\""), "{printed}");
    assert!(printed.contains("\"CT1\""), "{printed}");
    let over = [("DICOM_GATEWAY_AE_TITLE".to_owned(), "ENVGW".to_owned())];
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &over, &mounted, &argv(&["--print-config"])),
        "--print-config with the file and a variable",
    );
    assert!(printed.contains("ae_title = \"ENVGW\""), "{printed}");
    // The health check asks where the file says the server listens.
    let out = output(&mut run_in(
        &ctr,
        &user,
        &[],
        &mounted,
        &argv(&["healthcheck", "--timeout", "2"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{unused}/healthz")),
        "{out:?}"
    );

    // A secret twice, or from a file that is not there: refused, not guessed.
    let key_file = secret_file(tmp.path(), "access_key_id", "GK0123456789abcdef01234567");
    let file_volume = vec![format!("{}:/run/s3/access_key_id:ro", key_file.display())];
    let twice = [
        ("AWS_ACCESS_KEY_ID".to_owned(), "GKother".to_owned()),
        (
            "AWS_ACCESS_KEY_ID_FILE".to_owned(),
            "/run/s3/access_key_id".to_owned(),
        ),
    ];
    let out = output(&mut run_in(
        &ctr,
        &user,
        &twice,
        &file_volume,
        &argv(&["--print-config"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not both"),
        "{out:?}"
    );
    let missing = [(
        "AWS_SECRET_ACCESS_KEY_FILE".to_owned(),
        "/run/s3/nothing".to_owned(),
    )];
    let out = output(&mut run_in(
        &ctr,
        &user,
        &missing,
        &[],
        &argv(&["--print-config"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /run/s3/nothing"),
        "{out:?}"
    );
}
