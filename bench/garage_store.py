#!/usr/bin/env python3
"""Garage 2.5.0 as a benchmark's S3 store: one node on 127.0.0.1, fresh.

Used by bench/ingest.py's "gateway-garage" receiver (the gateway with its
objects in Garage), one instance per run. Standard library only; the signed
requests are made by curl (--aws-sigv4), as for bench/ingest.py's SeaweedFS.

    python3 bench/garage_store.py DIR   # start, one signed PUT/GET/DELETE, stop

The node is set up as docker/garage-init.sh sets up compose's (the Garage CLI:
layout role, key, bucket, the key's rights), with docker/garage.toml's
settings (SQLite metadata, one copy of each object, Garage's default fsync
settings) but on loopback ports and with its metadata and data directories
under the given directory. The key is imported with fixed, non-secret
credentials, so nothing needs to be parsed from the CLI's output. The store
counts as ready once a signed PUT went through (and its probe object was
deleted again).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

GARAGE = Path(os.environ.get("GARAGE_BIN", Path.home() / ".cargo" / "bin" / "garage"))  # scripts/test.sh
S3_PORT = 13900
RPC_PORT = 13901
ADMIN_PORT = 13903
REGION = "garage"  # docker/garage.toml's s3_region; SigV4 signs it
BUCKET = "bench"
# Garage's formats: "GK" + 24 hex digits, and 64 hex digits. Not secret: the
# store lives for one run on a loopback no one else can reach.
KEYS = ("GK0123456789abcdef01234567", "0123456789abcdef" * 4)
KEY_NAME = "bench"
START_TIMEOUT = 60.0  # seconds until the node answers and takes a signed PUT
STOP_TIMEOUT = 30.0  # seconds for SIGTERM before SIGKILL


class Garage:
    """A single-node Garage with one bucket and one key, its metadata and
    data directories under `directory`. Same interface as bench/ingest.py's
    SeaweedFS: start(), stop(), process, gateway_args(), gateway_env()."""

    def __init__(self, directory: Path, log_path: Path, bucket: str = BUCKET,
                 keys: tuple[str, str] = KEYS, s3_port: int = S3_PORT,
                 rpc_port: int = RPC_PORT, admin_port: int = ADMIN_PORT) -> None:  # fmt: skip
        self.directory, self.log_path = directory, log_path
        self.bucket, self.keys = bucket, keys
        self.s3_port, self.rpc_port, self.admin_port = s3_port, rpc_port, admin_port
        self.config = directory / "garage.toml"
        self.process: subprocess.Popen | None = None
        self.log = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def gateway_args(self, prefix: str) -> list[str]:
        """`dicom-gateway serve` flags for s3://<bucket>/<prefix> on this store."""
        return ["--storage", f"s3://{self.bucket}/{prefix}", "--storage-endpoint", self.endpoint,
                "--storage-region", REGION, "--storage-allow-http", "true"]  # fmt: skip

    def gateway_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.keys[0], "AWS_SECRET_ACCESS_KEY": self.keys[1],
                "AWS_SESSION_TOKEN": ""}  # fmt: skip

    def write_config(self) -> None:
        d = self.directory
        self.config.write_text(
            f'metadata_dir = "{d / "meta"}"\n'
            f'data_dir = "{d / "data"}"\n'
            'db_engine = "sqlite"\n'
            "replication_factor = 1\n"
            f'rpc_bind_addr = "127.0.0.1:{self.rpc_port}"\n'
            f'rpc_public_addr = "127.0.0.1:{self.rpc_port}"\n'
            f'rpc_secret = "{secrets.token_hex(32)}"\n'
            "\n[s3_api]\n"
            f's3_region = "{REGION}"\n'
            f'api_bind_addr = "127.0.0.1:{self.s3_port}"\n'
            'root_domain = ".s3.garage.localhost"\n'
            "\n[admin]\n"
            f'api_bind_addr = "127.0.0.1:{self.admin_port}"\n'
            f'admin_token = "{secrets.token_hex(16)}"\n'
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The Garage CLI against this node (RPC; the secret is in the config)."""
        result = subprocess.run([str(GARAGE), "-c", str(self.config), *args],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"garage {' '.join(args[:2])} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        return result

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        """HTTP status of a SigV4-signed request (curl signs), 0 when the
        store does not answer."""
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                "-X", method, "--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", ":".join(self.keys),
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]  # fmt: skip
        if body is not None:
            argv += ["--data-binary", "@-"]
        out = subprocess.run(argv + [self.endpoint + path], input=body, capture_output=True).stdout
        return int(out[-3:] or b"0")

    def poll(self, predicate, what: str, deadline: float) -> None:
        while not predicate():
            if self.process.poll() is not None:
                raise RuntimeError(f"garage server exited early with {self.process.returncode} (see {self.log_path})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for Garage: {what} (see {self.log_path})")
            time.sleep(0.05)

    def start(self) -> None:
        """Starts `garage server`, gives the node its layout role, imports
        the key, creates the bucket, and waits until a signed PUT goes
        through (all within START_TIMEOUT)."""
        deadline = time.monotonic() + START_TIMEOUT
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(GARAGE), "-c", str(self.config), "server"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env=os.environ | {"RUST_LOG": os.environ.get("GARAGE_LOG", "garage=warn")},
        )  # fmt: skip
        self.poll(lambda: self.cli("status", check=False).returncode == 0, "its RPC to answer", deadline)
        node = self.cli("node", "id", "-q").stdout.strip().split("@", 1)[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node)
        self.cli("layout", "apply", "--version", "1")
        self.cli("key", "import", "--yes", "-n", KEY_NAME, *self.keys)
        self.cli("bucket", "create", self.bucket)
        self.cli("bucket", "allow", "--read", "--write", "--owner", self.bucket, "--key", KEY_NAME)
        probe = f"/{self.bucket}/ready-probe"
        self.poll(lambda: self.request("PUT", probe, b"x") == 200, "a signed PUT", deadline)
        if self.request("DELETE", probe) != 204:
            raise RuntimeError("Garage took the probe PUT but did not delete it")

    def stop(self) -> None:
        """Stops the node (SIGTERM, then SIGKILL after STOP_TIMEOUT). Its
        directories stay: the benchmark deletes them with the run's outputs,
        after all runs of a set and 65 s before the next set (deleting
        thousands of files slows every file creation on ext4 without a
        journal for a minute; see bench/ingest.py, "Deleting outputs")."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None


def main() -> None:
    """Smoke check: start in DIR, one signed PUT/GET/DELETE, stop."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    directory = Path(sys.argv[1]).resolve()
    store = Garage(directory / "garage", directory / "garage.log")
    started = time.monotonic()
    try:
        store.start()
        print(f"ready after {time.monotonic() - started:.2f} s at {store.endpoint}")
        path = f"/{store.bucket}/smoke/object"
        codes = [store.request("PUT", path, b"hello"), store.request("GET", path), store.request("DELETE", path)]
        print(f"PUT/GET/DELETE: {codes}")
        if codes != [200, 200, 204]:
            sys.exit(1)
    finally:
        store.stop()
        shutil.rmtree(store.directory, ignore_errors=True)
    print(f"stopped; {store.directory} removed: {not store.directory.exists()}")


if __name__ == "__main__":
    main()
