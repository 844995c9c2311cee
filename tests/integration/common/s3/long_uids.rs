//! Test data with UIDs of a real modality's length (64 characters), so that
//! object keys pass 200 bytes: testdata/generate.py's `--long-uids`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::{Gateway, assert_ok, python, repo, storescu};

/// The fixtures of testdata/generate.py made again with 64-character UIDs
/// (`fixtures --long-uids`), once per version of the generator, under
/// cargo's temporary directory: same files and index as
/// [`crate::common::fixtures`], other UIDs.
pub fn fixtures() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures_dir().join("fixtures.json")).unwrap();
    serde_json::from_str(&text).expect("fixtures.json parses")
}

/// The fixture whose file name contains `name_part`.
pub fn fixture(name_part: &str) -> Value {
    fixtures()
        .into_iter()
        .find(|f| f["file"].as_str().unwrap().contains(name_part))
        .unwrap_or_else(|| panic!("no fixture matching {name_part}"))
}

/// The file of a fixture of [`fixtures`].
pub fn fixture_path(f: &Value) -> PathBuf {
    fixtures_dir().join(f["file"].as_str().unwrap())
}

/// Where [`fixtures`] are.
fn fixtures_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(make_long_fixtures).clone()
}

fn make_long_fixtures() -> PathBuf {
    let generator = repo().join("testdata/generate.py");
    let source = std::fs::read(&generator).unwrap();
    // FNV-1a of the generator: a changed generator makes a new set.
    let hash = source.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("long-uid-fixtures-{hash:016x}"));
    if dir.join("fixtures.json").is_file() {
        return dir;
    }
    // Made aside and renamed into place: another test process may be doing
    // the same (the loser's rename fails and its copy is removed).
    let building = tmp.join(format!(
        "long-uid-fixtures-{hash:016x}.{}",
        std::process::id()
    ));
    let out = Command::new(python())
        .arg(&generator)
        .arg("fixtures")
        .arg(&building)
        .arg("--long-uids")
        .output()
        .unwrap();
    assert_ok(&out, "generate.py fixtures --long-uids");
    if std::fs::rename(&building, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    assert!(dir.join("fixtures.json").is_file(), "{}", dir.display());
    dir
}

/// One multi-frame instance with `size_mib` MiB of pixel data and
/// 64-character UIDs (`generate.py big --long-uids`).
pub fn generate_big(path: &Path, size_mib: u32) {
    let out = Command::new(python())
        .arg(repo().join("testdata/generate.py"))
        .arg("big")
        .arg(path)
        .arg("--size-mib")
        .arg(size_mib.to_string())
        .arg("--long-uids")
        .output()
        .unwrap();
    assert_ok(&out, "generate.py big --long-uids");
}

/// [`generate_big`] in a temporary directory, sent with storescu (which must
/// succeed): the directory (removed when dropped) and the file.
pub fn send_big(gw: &Gateway, size_mib: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.dcm");
    generate_big(&big, size_mib);
    assert_ok(
        &storescu(gw, &["-xe"], &[big.as_path()]),
        &format!("storescu {size_mib} MiB"),
    );
    (dir, big)
}

/// A 64-character UID under the generator's root, made from `tag` (the
/// same tag, the same UID).
pub fn long_uid(tag: &str) -> String {
    let root = "1.2.826.0.1.3680043.10.1234.77.";
    let mut digits = String::new();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    while root.len() + digits.len() < 64 {
        for b in tag.bytes().chain(digits.clone().bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // Each round adds up to 19 digits; the first is never 0.
        digits.push_str(&(h % 9_000_000_000_000_000_000 + 1_000_000_000_000_000_000).to_string());
    }
    digits.truncate(64 - root.len());
    format!("{root}{digits}")
}
