//! Start-up, configuration and graceful shutdown of the real binary.

use std::process::{Command, Stdio};

use dicom_ul::pdu::PDataValueType::{Command as Cmd, Data};

use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
use crate::common::{self, Gateway};

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"));
    cmd.env_remove("DICOM_GATEWAY_API_TOKEN")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn sigterm_lets_an_in_flight_association_finish_then_exits_0() {
    let mut gw = Gateway::start();
    let f = common::fixture("study1/");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    let (sop, dataset) = (
        f["sop_instance"].as_str().unwrap(),
        common::dataset_bytes(&path),
    );

    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    gw.wait_for_log("association established");
    // Half an instance is in flight when the signal comes.
    let (_, cmd) = scu.command(0x0001, CT_IMAGE_STORAGE, sop, true);
    let (c, d) = (
        scu.pdv(Cmd, true, &cmd),
        scu.pdv(Data, false, &dataset[..1000]),
    );
    scu.send(vec![c, d]);
    gw.signal("TERM");
    gw.wait_for_log("waiting for associations to finish");
    // New associations are no longer accepted...
    assert!(
        std::net::TcpStream::connect(gw.dicom).is_err(),
        "listener still open"
    );
    // ...but the one in flight completes and is acknowledged.
    let rest = scu.pdv(Data, true, &dataset[1000..]);
    scu.send(vec![rest]);
    assert_eq!(scu.response().status, 0x0000);
    scu.release();
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status}");
    gw.restart();
    assert_eq!(gw.study(f["study"].as_str().unwrap())["instanceCount"], 1);
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = gateway()
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--dicom-listen",
            &addr,
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for DICOM on {addr}")),
        "{err}"
    );
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = gateway()
        .args(["--data-dir", file.to_str().unwrap()])
        .args([
            "--dicom-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data directory") || err.contains("unusable"),
        "{err}"
    );
}

#[test]
fn print_config_layers_flags_env_and_file_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "ae_title = \"FILEAE\"\nmax_associations = 5\nread_timeout = 9\n",
    )
    .unwrap();
    let out = gateway()
        .args([
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--read-timeout",
            "7",
        ])
        .env("DICOM_GATEWAY_AE_TITLE", "ENVAE")
        .env("DICOM_GATEWAY_API_TOKEN", "very-secret-value")
        .output()
        .unwrap();
    common::assert_ok(&out, "--print-config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ae_title = \"ENVAE\""), "{text}"); // env beats file
    assert!(text.contains("max_associations = 5"), "{text}"); // file beats default
    assert!(text.contains("read_timeout = 7"), "{text}"); // flag beats file
    assert!(!text.contains("very-secret-value"));
    assert!(text.contains("<redacted>"));
}

#[test]
fn a_bad_config_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "max_pdu_lenght = 5\n").unwrap();
    let out = gateway()
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gw.toml") && err.contains("max_pdu_lenght"),
        "{err}"
    );
}

#[test]
fn an_association_still_open_after_the_grace_period_is_aborted() {
    let mut gw = Gateway::start_with(common::Opts::default().arg("--shutdown-grace").arg("1"));
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    gw.wait_for_log("association established");
    gw.signal("TERM");
    // The peer keeps the association open and idle; the gateway gives up on
    // it when the grace period is over and still exits cleanly.
    gw.wait_for_log("grace period over; aborting associations");
    let status = gw.wait_exit();
    assert!(status.success(), "exit status {status}");
    gw.wait_for_log("shutdown grace period over");
    assert!(scu.receive_abort(), "the peer was not sent an A-ABORT");
}

/// A local store on another filesystem than the spool cannot take
/// instances by rename: the gateway says so at start-up instead of refusing
/// every instance later.
#[test]
fn a_local_store_on_another_filesystem_than_the_spool_is_refused_at_start() {
    use std::os::unix::fs::MetadataExt;
    let shm = std::path::Path::new("/dev/shm");
    let here = tempfile::tempdir().unwrap();
    assert_ne!(
        std::fs::metadata(shm).unwrap().dev(),
        std::fs::metadata(here.path()).unwrap().dev(),
        "this test needs /dev/shm on its own filesystem"
    );
    let store = tempfile::tempdir_in(shm).unwrap();
    let url = format!("file://{}", store.path().display());
    let (status, stderr) = Gateway::start_expecting_exit(
        common::Opts::default().arg("--storage").arg(&url),
        std::time::Duration::from_secs(60),
    );
    assert!(!status.success(), "started anyway:\n{stderr}");
    assert!(stderr.contains("must be on one filesystem"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}
