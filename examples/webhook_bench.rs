//! Load client for `bench/webhook.py`: latency and throughput of Avara's
//! `study.access_requested` against the gateway, and of Orthanc's
//! `GET /studies/{id}/instances` for the same study.
//!
//!     webhook_bench gateway URL KEY STUDY_UID REQUESTS CONCURRENCY SECONDS
//!     webhook_bench orthanc URL ORTHANC_STUDY_ID REQUESTS CONCURRENCY SECONDS
//!
//! Prints one JSON line: p50/p99/max latency (ms) over REQUESTS sequential
//! requests, then requests/s with CONCURRENCY clients for SECONDS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One kind of request, repeatable from many threads.
#[derive(Clone)]
enum Target {
    Gateway {
        url: String,
        key: Vec<u8>,
        body: String,
    },
    Orthanc {
        url: String,
    },
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Target {
    /// One request, its answer read to the last byte. With `check`, the
    /// answer is also parsed and the number of instances it names returned
    /// (done for the first request only: parsing 400 KB of JSON into a tree
    /// costs the client more than the server spends answering).
    fn call(&self, agent: &ureq::Agent, check: bool) -> usize {
        match self {
            Target::Gateway { url, key, body } => {
                // A fresh webhook-id each time: a repeated one would be
                // answered from the idempotency record, not computed.
                let id = format!(
                    "msg_bench_{}_{}",
                    std::process::id(),
                    NEXT_ID.fetch_add(1, Ordering::Relaxed)
                );
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
                mac.update(format!("{id}.{ts}.{body}").as_bytes());
                let sig = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
                let mut resp = agent
                    .post(url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", &ts)
                    .header("webhook-signature", &sig)
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .expect("gateway answers");
                assert_eq!(resp.status(), 200);
                let bytes = read_all(&mut resp);
                if !check {
                    assert!(bytes.starts_with(br#"{"authorized":true"#));
                    return 0;
                }
                let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(answer["authorized"], true, "{answer}");
                answer["urls"].as_array().unwrap().len()
            }
            Target::Orthanc { url } => {
                let mut resp = agent.get(url).call().expect("orthanc answers");
                assert_eq!(resp.status(), 200);
                let bytes = read_all(&mut resp);
                if !check {
                    assert!(bytes.starts_with(b"["));
                    return 0;
                }
                let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                answer.as_array().unwrap().len()
            }
        }
    }
}

fn read_all(resp: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
    resp.body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .expect("a whole answer")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, rest) = match args[0].as_str() {
        "gateway" => {
            let key = STANDARD
                .decode(args[2].trim_start_matches("whsec_"))
                .expect("whsec_ key");
            let body = serde_json::json!({
                "id": "whe_0123456789abcdef0123456789abcdef",
                "type": "study.access_requested",
                "data": { "studyId": "stu_0123456789abcdef0123456789abcdef", "studyInstanceUid": args[3] },
            })
            .to_string();
            (
                Target::Gateway {
                    url: args[1].clone(),
                    key,
                    body,
                },
                &args[4..],
            )
        }
        "orthanc" => {
            let url = format!("{}/studies/{}/instances", args[1], args[2]);
            (Target::Orthanc { url }, &args[3..])
        }
        other => panic!("unknown target {other}"),
    };
    let requests: usize = rest[0].parse().unwrap();
    let concurrency: usize = rest[1].parse().unwrap();
    let seconds: u64 = rest[2].parse().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    // Warm up, and check the answer lists the whole study.
    let instances = target.call(&agent, true);
    for _ in 0..50 {
        target.call(&agent, false);
    }
    let mut latencies: Vec<Duration> = (0..requests)
        .map(|_| {
            let t = Instant::now();
            target.call(&agent, false);
            t.elapsed()
        })
        .collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, done, stop) = (target.clone(), Arc::clone(&done), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                while !stop.load(Ordering::Relaxed) {
                    target.call(&agent, false);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let rps = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "instances": instances, "requests": requests,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "concurrency": concurrency, "rps": rps,
        })
    );
}
