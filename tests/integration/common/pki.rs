//! A test PKI made by tests/peers/make-test-certs.sh with openssl (the
//! site CA, the gateway's and a modality's certificates, a foreign CA and a
//! certificate from it), in a directory removed with it.

use std::process::Command;

use super as common;

/// The PKI's files: `ca.pem`, `server.pem`/`.key` (the gateway, also its
/// client certificate), `client.pem`/`.key` (a modality, also usable as a
/// server certificate for 127.0.0.1), `other-ca.pem`, `stranger.pem`/`.key`.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        common::require("/usr/bin/openssl");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .arg(common::repo().join("tests/peers/make-test-certs.sh"))
            .arg(dir.path())
            .output()
            .unwrap();
        common::assert_ok(&out, "make-test-certs.sh");
        Pki { dir }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}
