//! A throw-away PKI for unit tests, made by `tests/peers/make-test-certs.sh`
//! (openssl, installed by scripts/test.sh) — the same one the integration
//! tests and benchmarks use.

use std::path::PathBuf;

pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/make-test-certs.sh"
        );
        let out = std::process::Command::new("sh")
            .arg(script)
            .arg(dir.path())
            .output()
            .expect("running make-test-certs.sh (needs openssl: run scripts/test.sh)");
        assert!(
            out.status.success(),
            "make-test-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    /// `name.pem` or `name.key` in the PKI directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}
