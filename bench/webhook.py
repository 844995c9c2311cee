#!/usr/bin/env python3
"""Webhook benchmark: Avara's study.access_requested on the gateway vs
Orthanc's GET /studies/{id}/instances, for the same 1000-instance study.

    python3 bench/webhook.py [--requests 2000] [--concurrency 16] [--seconds 10] [--s3]

Run as root from the repository; it builds the release binary and the
client first (`cargo build --release --bins --examples`).
Both servers and the client share a private network namespace (Orthanc
cannot bind to 127.0.0.1 only). The study is bench/out/sets/ct512 (made by
bench/ingest.py or `testdata/generate.py bench bench/out/sets/ct512/all --set
ct512`), sent to both with DCMTK storescu. The client is
examples/webhook_bench.rs: sequential latency over --requests requests (each
gateway request freshly signed with its own webhook-id, so none is answered
from the idempotency record), then requests/s with --concurrency clients.
Latency is to the last byte of the answer; the first answer of each server
is parsed and its instances counted, later ones are checked by their first
bytes only (parsing 400 KB into a JSON tree costs the client more than the
gateway spends answering).
With --s3, a third server in the same run: the gateway storing into
SeaweedFS (`weed mini` from .venv, set up as bench/ingest.py's gateway-s3),
whose access answers carry URLs presigned for the store (SigV4) rather than
the gateway's own signed /files URLs.
Results go to stdout and bench/results/webhook-<date>[-s3].md.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "whsec_YmVuY2htYXJrLWtleS1ub3QtYS1zZWNyZXQ="
SET = os.path.join(REPO, "bench/out/sets/ct512/all")
GW_HTTP, GW_DICOM, ORTHANC_HTTP, ORTHANC_DICOM = 18080, 11112, 18042, 14242
S3GW_HTTP, S3GW_DICOM = 18081, 11113


def start_seaweedfs(work: str) -> subprocess.Popen:
    """SeaweedFS as bench/ingest.py's gateway-s3 runs it; returns once it
    takes writes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import ingest  # the same store setup, ports and credentials

    s3_dir = os.path.join(work, "s3")
    os.makedirs(os.path.join(s3_dir, "tmp"))
    identities = {"identities": [{"name": "bench", "credentials": [
        {"accessKey": ingest.S3_KEYS[0], "secretKey": ingest.S3_KEYS[1]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    with open(os.path.join(s3_dir, "identities.json"), "w") as f:
        json.dump(identities, f)
    ports = [f"-{flag}={port}" for flag, port in ingest.WEED_PORTS.items()]
    weed = subprocess.Popen(
        [str(ingest.WEED), "-logtostderr", "mini", f"-dir={s3_dir}", "-ip=127.0.0.1",
         "-ip.bind=127.0.0.1", f"-s3.config={s3_dir}/identities.json", f"-bucket={ingest.S3_BUCKET}",
         "-admin.ui=false", "-webdav=false", "-master.telemetry=false", f"-s3.port={ingest.S3_PORT}",
         "-s3.port.iceberg=0", "-s3.port.lance=0", f"-filer.localSocket={s3_dir}/filer.sock",
         f"-s3.localSocket={s3_dir}/s3.sock", *ports],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TMPDIR=f"{s3_dir}/tmp"))
    probe = f"/{ingest.S3_BUCKET}/ready-probe"
    ingest.wait_for(lambda: ingest.s3_request("PUT", probe, b"x") == 200
                    and ingest.s3_request("DELETE", probe) == 204, 60.0, "SeaweedFS to take writes")
    return weed


def wait_http(url: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} never answered")


def storescu(port: int, called: str) -> None:
    env = dict(os.environ, TCP_NODELAY="1")
    subprocess.run(["/usr/bin/storescu", "-aec", called, "+sd", "127.0.0.1", str(port), SET], check=True, env=env)


def client(*args: str) -> dict:
    exe = os.path.join(REPO, "target/release/examples/webhook_bench")
    out = subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--s3", action="store_true", help="also the gateway on SeaweedFS, same run")
    args = ap.parse_args()
    if os.environ.get("WEBHOOK_BENCH_NETNS") != "1":
        cmd = f"ip link set lo up && exec {sys.executable} {' '.join(map(repr, sys.argv))}"
        os.execvpe("unshare", ["unshare", "-n", "--", "bash", "-c", cmd], dict(os.environ, WEBHOOK_BENCH_NETNS="1"))
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples"], cwd=REPO, check=True)
    if not os.path.isdir(SET):
        sys.exit(f"{SET} missing: run bench/ingest.py --sets ct512 --quick first")
    work = tempfile.mkdtemp(prefix="webhook-bench-", dir=os.path.join(REPO, "bench/out"))
    procs = []
    try:
        gw = subprocess.Popen(
            [os.path.join(REPO, "target/release/dicom-gateway"), "serve", "--data-dir", f"{work}/gw",
             "--dicom-listen", f"127.0.0.1:{GW_DICOM}", "--http-listen", f"127.0.0.1:{GW_HTTP}",
             "--public-url", f"http://127.0.0.1:{GW_HTTP}"],
            env=dict(os.environ, AVARA_WEBHOOK_KEY=KEY, RUST_LOG="warn"), stderr=subprocess.DEVNULL)
        procs.append(gw)
        os.makedirs(f"{work}/orthanc")
        config = {"Name": "bench", "StorageDirectory": f"{work}/orthanc/db", "IndexDirectory": f"{work}/orthanc/db",
                  "HttpPort": ORTHANC_HTTP, "DicomPort": ORTHANC_DICOM, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomAet": "ORTHANC", "Plugins": [], "StorageCompression": False}
        with open(f"{work}/orthanc/config.json", "w") as f:
            json.dump(config, f)
        orthanc = subprocess.Popen(["/usr/sbin/Orthanc", f"{work}/orthanc/config.json"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(orthanc)
        if args.s3:
            import ingest
            weed = start_seaweedfs(work)
            procs.insert(0, weed)  # stopped last
            s3gw = subprocess.Popen(
                [os.path.join(REPO, "target/release/dicom-gateway"), "serve", "--data-dir", f"{work}/gw-s3",
                 "--dicom-listen", f"127.0.0.1:{S3GW_DICOM}", "--http-listen", f"127.0.0.1:{S3GW_HTTP}",
                 "--public-url", f"http://127.0.0.1:{S3GW_HTTP}", "--storage", f"s3://{ingest.S3_BUCKET}/gw",
                 "--storage-endpoint", f"http://127.0.0.1:{ingest.S3_PORT}", "--storage-allow-http", "true"],
                env=dict(os.environ, AVARA_WEBHOOK_KEY=KEY, RUST_LOG="warn",
                         AWS_ACCESS_KEY_ID=ingest.S3_KEYS[0], AWS_SECRET_ACCESS_KEY=ingest.S3_KEYS[1]),
                stderr=subprocess.DEVNULL)
            procs.append(s3gw)
            wait_http(f"http://127.0.0.1:{S3GW_HTTP}/healthz")
            storescu(S3GW_DICOM, "DICOMGW")
        wait_http(f"http://127.0.0.1:{GW_HTTP}/healthz")
        wait_http(f"http://127.0.0.1:{ORTHANC_HTTP}/system")
        storescu(GW_DICOM, "DICOMGW")
        storescu(ORTHANC_DICOM, "ORTHANC")
        study_uid = json.load(urllib.request.urlopen(f"http://127.0.0.1:{GW_HTTP}/api/studies"))[0]["studyInstanceUid"]
        orthanc_study = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ORTHANC_HTTP}/studies"))[0]
        common = [str(args.requests), str(args.concurrency), str(args.seconds)]
        g = client("gateway", f"http://127.0.0.1:{GW_HTTP}/webhooks/avara", KEY, study_uid, *common)
        o = client("orthanc", f"http://127.0.0.1:{ORTHANC_HTTP}", orthanc_study, *common)
        s3 = client("gateway", f"http://127.0.0.1:{S3GW_HTTP}/webhooks/avara", KEY, study_uid, *common) if args.s3 else None
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)
    orthanc_version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "orthanc"], capture_output=True, text=True).stdout
    lines = [
        f"# Webhook benchmark ({datetime.date.today()})", "",
        f"Command: `python3 bench/webhook.py --requests {args.requests} --concurrency {args.concurrency} --seconds {args.seconds}{' --s3' if args.s3 else ''}`", "",
        "| server | request | instances answered | p50 ms | p99 ms | max ms | req/s with %d clients |" % args.concurrency,
        "|---|---|--:|--:|--:|--:|--:|",
        f"| dicom-gateway | signed `study.access_requested` (URLs + manifest) | {g['instances']} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | {g['max_ms']:.2f} | {g['rps']:.0f} |",
        f"| Orthanc {orthanc_version} | `GET /studies/{{id}}/instances` | {o['instances']} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {o['max_ms']:.2f} | {o['rps']:.0f} |",
        *([f"| dicom-gateway on S3 (SeaweedFS) | signed `study.access_requested` (URLs presigned for the store) | {s3['instances']} | {s3['p50_ms']:.2f} | {s3['p99_ms']:.2f} | {s3['max_ms']:.2f} | {s3['rps']:.0f} |"] if s3 else []),
        "", f"Throughput ratio gateway / Orthanc: {g['rps'] / o['rps']:.1f}×",
        *([f"Throughput ratio gateway on S3 / gateway on the local disk: {s3['rps'] / g['rps']:.2f}×"] if s3 else []), "",
        f"Machine: {os.cpu_count()} cores, kernel {os.uname().release}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(REPO, "bench/results"), exist_ok=True)
    suffix = "-s3" if args.s3 else ""
    with open(os.path.join(REPO, f"bench/results/webhook-{datetime.date.today()}{suffix}.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
