//! The tests' own S3 client: what they check in a bucket they check as any
//! S3 client would (listing, GET, HEAD, DELETE with `object_store`; the
//! multipart listings, which object_store does not offer, with curl's SigV4
//! signing), and what they ask of SeaweedFS's own HTTP side.

use std::process::Command;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use super::REGION;

/// The key [`S3Client::write_probe`] writes and deletes. A probe PUT that
/// curl gave up on while a restarted store was still finding a volume can be
/// carried out by the store later, after the store was declared ready (CI saw
/// it appear in the middle of a test); so listings leave it out.
const WRITE_PROBE: &str = "write-probe";

/// An S3 client for the tests' own look at a bucket (blocking; each call
/// runs on a small runtime of its own).
#[derive(Clone, Debug)]
pub struct S3Client {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Client {
    fn store(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(REGION)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .build()
            .expect("S3 client")
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every object key in the bucket but the tests' own write probe,
    /// sorted (S3 listing, all pages).
    pub fn keys(&self) -> Vec<String> {
        use futures::TryStreamExt;
        let store = self.store();
        let mut keys: Vec<String> = self
            .block_on(store.list(None).try_collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("listing {}: {e}", self.bucket))
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|key| key != WRITE_PROBE)
            .collect();
        keys.sort();
        keys
    }

    /// The bytes of object `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let store = self.store();
        let path = ObjectPath::parse(key).unwrap();
        self.block_on(async { store.get(&path).await?.bytes().await })
            .unwrap_or_else(|e| panic!("GET {key}: {e}"))
            .to_vec()
    }

    /// The size and ETag of object `key`.
    pub fn head(&self, key: &str) -> (u64, String) {
        let store = self.store();
        let path = ObjectPath::parse(key).unwrap();
        let meta = self
            .block_on(store.head(&path))
            .unwrap_or_else(|e| panic!("HEAD {key}: {e}"));
        (meta.size, meta.e_tag.unwrap_or_default())
    }

    /// Bytes `range` of object `key`.
    pub fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
        let store = self.store();
        let path = ObjectPath::parse(key).unwrap();
        self.block_on(store.get_range(&path, range))
            .unwrap_or_else(|e| panic!("GET {key} (range): {e}"))
            .to_vec()
    }

    pub fn delete(&self, key: &str) {
        let store = self.store();
        let path = ObjectPath::parse(key).unwrap();
        self.block_on(store.delete(&path))
            .unwrap_or_else(|e| panic!("DELETE {key}: {e}"));
    }

    /// Whether the bucket answers a signed listing (SeaweedFS creates the
    /// `-bucket` one asynchronously after it starts).
    pub fn bucket_ready(&self) -> bool {
        matches!(self.curl(&format!("/{}", self.bucket)), Some((200, _)))
    }

    /// Creates the bucket (CreateBucket); whether the store said 200.
    pub fn create_bucket(&self) -> bool {
        matches!(
            self.curl_method("PUT", &format!("/{}", self.bucket), None),
            Some((200, _))
        )
    }

    /// Whether an object can be written (and is deleted again): a PUT
    /// needs a writable volume, which a restarted store has only once its
    /// volume server reported to the master.
    pub fn write_probe(&self) -> bool {
        let path = format!("/{}/{WRITE_PROBE}", self.bucket);
        matches!(self.curl_method("PUT", &path, Some("x")), Some((200, _)))
            && matches!(self.curl_method("DELETE", &path, None), Some((204, _)))
    }

    /// `(key, upload id)` of every open multipart upload
    /// (ListMultipartUploads, which object_store does not offer).
    pub fn incomplete_uploads(&self) -> Vec<(String, String)> {
        let (status, body) = self
            // `uploads=`: curl signs a bare `uploads` differently from
            // how the store reads it (SignatureDoesNotMatch).
            .curl(&format!("/{}?uploads=", self.bucket))
            .expect("ListMultipartUploads");
        assert_eq!(status, 200, "ListMultipartUploads: {body}");
        assert!(!body.contains("<IsTruncated>true</IsTruncated>"), "{body}");
        elements(&body, "Upload")
            .iter()
            .map(|u| {
                let one = |name| elements(u, name).first().cloned().unwrap_or_default();
                (one("Key"), one("UploadId"))
            })
            .collect()
    }

    /// How many parts the store holds of upload `id` of `key` (ListParts).
    pub fn part_count(&self, key: &str, id: &str) -> usize {
        match self.curl(&format!("/{}/{key}?uploadId={id}", self.bucket)) {
            Some((200, body)) => elements(&body, "Part").len(),
            // Completed or aborted in the meantime.
            _ => 0,
        }
    }

    /// A GET signed with SigV4 by curl: status and body, or `None` when the
    /// store does not answer.
    fn curl(&self, path_and_query: &str) -> Option<(u16, String)> {
        self.curl_method("GET", path_and_query, None)
    }

    /// [`S3Client::curl`] with another method, and a body if given.
    fn curl_method(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let mut cmd = Command::new("curl");
        if let Some(body) = body {
            cmd.args(["--data-binary", body]);
        }
        let out = cmd
            .args([
                "-s",
                "-X",
                method,
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
            .args([
                "--user",
                &format!("{}:{}", self.access_key, self.secret_key),
            ])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(format!("{}{path_and_query}", self.endpoint))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_owned()))
    }
}

/// The volume servers a SeaweedFS master on `master_port` has in its
/// topology (`/dir/status`): their addresses.
pub fn data_nodes(master_port: u16) -> Vec<String> {
    let url = format!("http://127.0.0.1:{master_port}/dir/status");
    let Ok(mut resp) = short_agent().get(&url).call() else {
        return Vec::new();
    };
    let Ok(status) = resp.body_mut().read_json::<Value>() else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for dc in status["Topology"]["DataCenters"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for rack in dc["Racks"].as_array().into_iter().flatten() {
            for node in rack["DataNodes"].as_array().into_iter().flatten() {
                nodes.extend(node["Url"].as_str().map(str::to_owned));
            }
        }
    }
    nodes
}

/// An HTTP client that gives up after 10 s: what is asked of the store's
/// own HTTP side must not hang a test on a process that accepted the
/// connection and then never answers.
pub fn short_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The text of every `<name>…</name>` element in `xml` (no nesting of the
/// same name; enough for S3's listings).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    found
}
