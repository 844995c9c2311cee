#!/usr/bin/env python3
"""The fsync floor: what one durable write costs on the data directory's disk.

    python3 bench/fsync_floor.py [DIR]             # DIR defaults to ./storage; ~1 min
    python3 bench/fsync_floor.py --runs 3 --pause 300   # 3 runs, 5 min apart; medians of the runs
    python3 bench/fsync_floor.py --seconds 0.2 --no-write   # a smoke run

Standard library only (Python 3.8+, Linux). Everything happens in a scratch
directory DIR/.fsync-floor-<pid>, removed at the end, so DIR must be on the
filesystem the gateway's data directory (objects, spool, sled) lives on.
Results go to stdout and bench/results/fsync-floor-<date>.md (next to this
script), unless --no-write.

What is measured (latency = one operation to its last sync, in ms; median,
p99, mean and p10). Every case gets --seconds (default 2) per run, in 8
slices interleaved with the other cases (the order rotates each slice), so
a burst of load from elsewhere is spread over all cases rather than spoiling
one; --pause puts time between runs, to sample different moments of a
shared machine. The p10 approximates what the disk does on a quiet machine;
the "wake" row (a 0.1 ms sleep, no I/O) shows how much of every figure is
waiting for a CPU.

  a9, a512   overwrite 9 KiB / 512 KiB at the next offset of a 64 MiB file
             that was preallocated *and written* beforehand (no block
             allocation, no unwritten extents, no size change), + fdatasync.
             This is a reused journal segment.
  b9         write 9 KiB at the next offset of a file preallocated with
             posix_fallocate but never written (unwritten extents: the
             fdatasync must also commit their conversion), + fdatasync.
  b9grow     append 9 KiB to a file that grows (no preallocation), + fdatasync.
  c9, c512   today's placement of one instance: create a new file in spool/,
             write, fdatasync, rename into objects/<series>/, fsync that
             directory.
  c9pool     the same with the spool file created beforehand (the gateway
             keeps a pool of empty spool files), so only write + fdatasync +
             rename + directory fsync are timed.
  d9, d512   today's whole commit for one instance, approximated: c*pool,
             then a sled-like index commit: append ~1.5 KiB to a growing log
             file + fsync (sled's flush) + fdatasync of the same file (the
             gateway's own sync of sled's log).
  r512       a large instance by reference, as the journal design does it:
             the pooled spool file written (512 KiB) and fdatasynced *in
             parallel* with a 256-byte journal record overwrite + fdatasync;
             latency until both are done.
  r512ser    the same, one after the other (spool fdatasync, then journal).
  e9/eN      group commit: N writer threads each append a 10 KiB record
             (9 KiB instance + ~1 KiB index entry and events) to one
             preallocated, written file and wait until an fdatasync covers
             it; whoever finds no sync under way leads one for everything
             written so far (leader/follower, as in the design). ops/s and
             records per sync, for N = 1, 4, 16.
  e512/eN    the same with 512 KiB records (a large instance inline).
  wake       no I/O: time.sleep(0.0001); anything above 0.1 ms is scheduler delay.
  bw         sequential write bandwidth: 64 MiB in 1 MiB writes + one
             fdatasync, into the preallocated, written file (MiB/s).

The floors printed at the end: instances/s if each acknowledgement costs
exactly the measured sync (one association: 1000 / median ms), and with
group commit (four associations: the e*/N=4 rate), for the benchmark sets
of BENCHMARKS.md (5000 x 9 KiB, 1000 x 512 KiB).

The machine may be shared and noisy: use --runs 3 and read the medians.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import threading
import time

KIB = 1024
MIB = 1024 * KIB
SEGMENT = 64 * MIB


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def written_file(path, size):
    """A file of `size` bytes, every block allocated and written, synced."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    chunk = b"\0" * MIB
    for off in range(0, size, MIB):
        os.pwrite(fd, chunk, off)
    os.fsync(fd)
    return fd


class Cursor:
    """Next offset in a segment, wrapping around (a reused segment)."""

    def __init__(self, size, step):
        self.size, self.step, self.off = size, step, 0

    def next(self):
        if self.off + self.step > self.size:
            self.off = 0
        off = self.off
        self.off += self.step
        return off


class Wake:
    """No I/O: a 0.1 ms sleep. What it takes beyond 0.1 ms is waiting for a
    CPU, which every other figure pays too (on a loaded, shared machine this
    is the noise)."""

    def op(self):
        time.sleep(0.0001)


class Overwrite:
    """A preallocated, written segment; each op overwrites the next `size` bytes."""

    def __init__(self, scratch, size, payload, segment=16 * MIB):
        self.fd = written_file(os.path.join(scratch, "seg-%d" % size), segment)
        self.cur = Cursor(segment, size)
        self.payload = payload[:size]

    def op(self):
        os.pwrite(self.fd, self.payload, self.cur.next())
        os.fdatasync(self.fd)


class Fallocated:
    """posix_fallocate'd, never written: every op writes into unwritten extents."""

    def __init__(self, scratch, payload, size=256 * MIB):
        self.fd = os.open(os.path.join(scratch, "falloc"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(self.fd, 0, size)
        os.fsync(self.fd)
        self.off, self.size = 0, size
        self.payload = payload[: 9 * KIB]

    def op(self):
        if self.off + len(self.payload) > self.size:  # used up: start over (now overwrites)
            self.off = 0
        os.pwrite(self.fd, self.payload, self.off)
        self.off += len(self.payload)
        os.fdatasync(self.fd)


class Grow:
    def __init__(self, scratch, payload):
        self.fd = os.open(os.path.join(scratch, "grow"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.payload = payload[: 9 * KIB]

    def op(self):
        os.write(self.fd, self.payload)
        os.fdatasync(self.fd)


class Layout:
    """spool/ and objects/<study>/<series>/ as in the gateway's data directory."""

    def __init__(self, scratch, tag):
        self.spool = os.path.join(scratch, "spool-" + tag)
        self.series = os.path.join(scratch, "objects-" + tag, "1.2.3", "1.2.3.4")
        os.makedirs(self.spool)
        os.makedirs(self.series)
        fsync_dir(self.spool)
        self.n = 0
        self.pool = []

    def fill_pool(self, count):
        for _ in range(count):
            self.n += 1
            p = os.path.join(self.spool, "pool-%d.part" % self.n)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self.pool.append((p, fd))
        fsync_dir(self.spool)

    def take(self):
        """A pooled spool file (untimed: the gateway refills in the background)."""
        if not self.pool:
            self.fill_pool(128)
        return self.pool.pop()

    def new_spool(self):
        self.n += 1
        p = os.path.join(self.spool, "%d.part" % self.n)
        return p, os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def place(self, path):
        self.n += 1
        dest = os.path.join(self.series, "%d.dcm" % self.n)
        os.rename(path, dest)
        fsync_dir(self.series)


class Today:
    """Today's placement (c*) or whole commit (d*) of one instance."""

    def __init__(self, scratch, tag, size, payload, pool, sled):
        self.lay = Layout(scratch, tag)
        self.payload = payload[:size]
        self.pool = pool
        self.log = None
        if sled:
            self.log = os.open(os.path.join(scratch, "sled-" + tag), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.entry = payload[:1536]
        self.ready = None

    def prepare(self):
        if self.pool:
            self.ready = self.lay.take()

    def op(self):
        p, fd = self.ready if self.pool else self.lay.new_spool()
        os.write(fd, self.payload)
        os.fdatasync(fd)
        os.close(fd)
        self.lay.place(p)
        if self.log is not None:
            os.write(self.log, self.entry)
            os.fsync(self.log)  # sled's flush
            os.fdatasync(self.log)  # the gateway's own sync of sled's log


class Reference:
    """A large instance by reference: its pooled spool file (512 KiB, written
    beforehand, as write-behind does while it arrives) fdatasynced in parallel
    with (or before) a 256-byte journal record overwrite + fdatasync."""

    def __init__(self, scratch, tag, payload, parallel):
        self.lay = Layout(scratch, tag)
        self.jfd = written_file(os.path.join(scratch, "journal-" + tag), 16 * MIB)
        self.cur = Cursor(16 * MIB, 256)
        self.record = payload[:256]
        self.payload = payload[: 512 * KIB]
        self.parallel = parallel
        self.go, self.done = threading.Event(), threading.Event()
        self.stop = False
        self.ready = None
        if parallel:
            self.worker = threading.Thread(target=self.journal_worker, daemon=True)
            self.worker.start()

    def journal_worker(self):
        while True:
            self.go.wait()
            self.go.clear()
            if self.stop:
                return
            os.pwrite(self.jfd, self.record, self.cur.next())
            os.fdatasync(self.jfd)
            self.done.set()

    def prepare(self):
        if self.ready is not None:
            p, fd = self.ready
            os.close(fd)
            os.unlink(p)
        p, fd = self.lay.take()
        os.write(fd, self.payload)
        self.ready = (p, fd)

    def op(self):
        p, fd = self.ready
        if self.parallel:
            self.go.set()
            os.fdatasync(fd)
            self.done.wait()
            self.done.clear()
        else:
            os.fdatasync(fd)
            os.pwrite(self.jfd, self.record, self.cur.next())
            os.fdatasync(self.jfd)

    def close(self):
        if self.parallel:
            self.stop = True
            self.go.set()
            self.worker.join()


class GroupLog:
    """Leader/follower group commit over one preallocated, written file."""

    def __init__(self, fd, size):
        self.fd, self.size = fd, size
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.next_lsn = 0  # bytes reserved
        self.written = 0  # every byte below this is written
        self.pending = {}  # lsn -> end, written out of order
        self.durable = 0
        self.syncing = False
        self.syncs = 0

    def append(self, payload):
        with self.lock:
            lsn = self.next_lsn
            self.next_lsn += len(payload)
        off = lsn % self.size
        os.pwrite(self.fd, payload, off if off + len(payload) <= self.size else 0)
        end = lsn + len(payload)
        with self.lock:
            self.pending[lsn] = end
            while self.written in self.pending:
                self.written = self.pending.pop(self.written)
            while self.durable < end:
                if not self.syncing:
                    # Leader: one sync for everything written so far.
                    self.syncing = True
                    target = self.written
                    self.lock.release()
                    try:
                        os.fdatasync(self.fd)
                    finally:
                        self.lock.acquire()
                    self.syncing = False
                    self.syncs += 1
                    self.durable = max(self.durable, target)
                    self.cv.notify_all()
                else:
                    self.cv.wait()


class Group:
    def __init__(self, scratch, size, writers):
        self.fd = written_file(os.path.join(scratch, "group-%d-%d" % (size, writers)), 16 * MIB)
        self.log = GroupLog(self.fd, 16 * MIB)
        self.payload = os.urandom(size)
        self.writers = writers
        self.ops = 0
        self.wall = 0.0

    def slice(self, seconds):
        stop = time.perf_counter() + seconds
        counts = [0] * self.writers

        def writer(i):
            while time.perf_counter() < stop:
                self.log.append(self.payload)
                counts[i] += 1

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(self.writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall += time.perf_counter() - t0
        self.ops += sum(counts)

    def result(self):
        return self.ops / self.wall, self.ops / max(1, self.log.syncs)


def record_floor(directory, record_bytes, seconds=1.0, writers=4, min_ops=3):
    """The floor for instances of `record_bytes`, measured now in a scratch
    directory under `directory` (removed again), for bench/ingest.py's rows:

    - one writer: overwrites of `record_bytes` at the next offset of a
      preallocated, already-written file (case a), each + fdatasync, for
      `seconds` (at least `min_ops`; the first, which pays for the new file,
      is dropped): median and p10 latency in ms;
    - `writers` threads appending such records to the same file with
      leader/follower group commit (GroupLog) for `seconds`: records/s and
      records per sync.

    The file is 16 MiB or 5 records, whichever is larger, so a record never
    spans the wrap (even for 100 MiB records: then 500 MiB are written first).
    Returns a dict (times in ms, rates per second)."""
    scratch = os.path.join(directory, ".fsync-floor-%d" % os.getpid())
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    try:
        size = max(16 * MIB, -(-5 * record_bytes // MIB) * MIB)
        fd = written_file(os.path.join(scratch, "segment"), size)
        payload = os.urandom(record_bytes)
        cursor = Cursor(size, record_bytes)
        lat = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(lat) <= min_ops:
            t0 = time.perf_counter_ns()
            os.pwrite(fd, payload, cursor.next())
            os.fdatasync(fd)
            lat.append((time.perf_counter_ns() - t0) / 1e6)
        lat = lat[1:]

        group = GroupLog(fd, size)
        counts = [0] * writers
        stop = time.perf_counter() + seconds

        def writer(i):
            while time.perf_counter() < stop or counts[i] == 0:
                group.append(payload)
                counts[i] += 1

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "record_bytes": record_bytes,
        "median_ms": statistics.median(lat),
        "p10_ms": pct(lat, 10),
        "ops": len(lat),
        "group_writers": writers,
        "group_ops_per_s": sum(counts) / wall,
        "group_records_per_sync": sum(counts) / max(1, group.syncs),
    }


def bench_bandwidth(scratch):
    fd = written_file(os.path.join(scratch, "bw"), SEGMENT)
    chunk = os.urandom(MIB)
    t0 = time.perf_counter()
    for off in range(0, SEGMENT, MIB):
        os.pwrite(fd, chunk, off)
    os.fdatasync(fd)
    dt = time.perf_counter() - t0
    os.close(fd)
    os.unlink(os.path.join(scratch, "bw"))
    return SEGMENT / MIB / dt


LATENCY = [
    ("a9", "9 KiB overwrite, preallocated+written file, fdatasync"),
    ("a512", "512 KiB overwrite, preallocated+written file, fdatasync"),
    ("b9", "9 KiB into fallocated (unwritten) extents, fdatasync"),
    ("b9grow", "9 KiB append, growing file, fdatasync"),
    ("c9", "new file 9 KiB + fdatasync + rename + dir fsync"),
    ("c512", "new file 512 KiB + fdatasync + rename + dir fsync"),
    ("c9pool", "pooled spool file 9 KiB + fdatasync + rename + dir fsync"),
    ("d9", "today's commit, 9 KiB (c9pool + sled-like append + fsync + fdatasync)"),
    ("d512", "today's commit, 512 KiB (same)"),
    ("r512", "512 KiB by reference: spool fdatasync || journal record fdatasync"),
    ("r512ser", "512 KiB by reference, serial: spool fdatasync, then journal"),
    ("wake", "no I/O: a 0.1 ms sleep (scheduler noise; 0.1 = none)"),
]
GROUPS = [(9 * KIB + KIB, n) for n in (1, 4, 16)] + [(512 * KIB + KIB, n) for n in (1, 4, 16)]
ROUNDS = 8


def one_run(parent, seconds, data, number):
    """Every case gets `seconds` in ROUNDS slices, interleaved (the order
    rotates each round), so a burst of load from elsewhere is spread over
    all cases instead of spoiling one."""
    scratch = os.path.join(parent, "run%d" % number)
    os.makedirs(scratch)
    cases = {
        "a9": Overwrite(scratch, 9 * KIB, data),
        "a512": Overwrite(scratch, 512 * KIB, data),
        "b9": Fallocated(scratch, data),
        "b9grow": Grow(scratch, data),
        "c9": Today(scratch, "c9", 9 * KIB, data, False, False),
        "c512": Today(scratch, "c512", 512 * KIB, data, False, False),
        "c9pool": Today(scratch, "c9pool", 9 * KIB, data, True, False),
        "d9": Today(scratch, "d9", 9 * KIB, data, True, True),
        "d512": Today(scratch, "d512", 512 * KIB, data, True, True),
        "r512": Reference(scratch, "r512", data, True),
        "r512ser": Reference(scratch, "r512ser", data, False),
        "wake": Wake(),
    }
    groups = {(size, n): Group(scratch, size, n) for size, n in GROUPS}
    lat = {k: [] for k in cases}
    order = list(cases) + list(groups)
    slice_s = seconds / ROUNDS
    for r in range(ROUNDS):
        rot = order[r % len(order):] + order[: r % len(order)]
        for key in rot:
            if key in groups:
                groups[key].slice(slice_s)
                continue
            case = cases[key]
            prepare = getattr(case, "prepare", None)
            end = time.perf_counter() + slice_s
            first = True
            while time.perf_counter() < end:
                if prepare:
                    prepare()
                t0 = time.perf_counter_ns()
                case.op()
                dt = (time.perf_counter_ns() - t0) / 1e6
                if first:  # the first op of a slice pays for the switch between files
                    first = False
                    continue
                lat[key].append(dt)
    for case in cases.values():
        close = getattr(case, "close", None)
        if close:
            close()
    bw = bench_bandwidth(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = {k: (statistics.median(v), pct(v, 99), len(v), statistics.mean(v), pct(v, 10))
               for k, v in lat.items()}
    return summary, {k: g.result() for k, g in groups.items()}, bw


def fs_info(path):
    path = os.path.realpath(path)
    best = ("?", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, typ, opts = line.split()[:4]
                if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
                    if len(mnt) >= len(best[1]) or best[1] == "?":
                        best = (dev, mnt, "%s (%s)" % (typ, opts))
    except OSError:
        pass
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default="./storage")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    ap.add_argument("--pause", type=float, default=0, help="seconds between runs (sample other moments of a shared machine)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    scratch = os.path.join(args.dir, ".fsync-floor-%d" % os.getpid())
    os.makedirs(scratch)
    data = os.urandom(600 * KIB)
    runs = []
    loads = []
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        for r in range(args.runs):
            if r and args.pause:
                time.sleep(args.pause)
            t0 = time.perf_counter()
            runs.append(one_run(scratch, args.seconds, data, r))
            loads.append(open("/proc/loadavg").read().split()[0])
            print("run %d/%d: %.0f s" % (r + 1, args.runs, time.perf_counter() - t0), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = lambda xs: statistics.median(xs)
    lines = []
    dev, mnt, typ = fs_info(args.dir)
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    lines.append("# fsync floor, %s" % started.strftime("%Y-%m-%d %H:%M UTC"))
    lines.append("")
    lines.append("`python3 bench/fsync_floor.py %s --runs %d --seconds %g --pause %g` on %s, %s mounted at %s, %s; "
                 "kernel %s; %d CPUs, load average %s at the end. Medians of the per-run figures "
                 "(per-run medians in the last column). Load average (1 min) after each run: %s."
                 % (args.dir, args.runs, args.seconds, args.pause, dev, typ, mnt, os.path.realpath(args.dir),
                    platform.release(), os.cpu_count() or 0, " ".join(load), ", ".join(loads)))
    lines.append("")
    lines.append("## Latency of one durable write (ms)")
    lines.append("")
    lines.append("| case | what | median | p99 | mean | p10 | ops per run | per-run medians |")
    lines.append("|---|---|--:|--:|--:|--:|--:|---|")
    summary = {}
    for key, what in LATENCY:
        m = med([run[0][key][0] for run in runs])
        p = med([run[0][key][1] for run in runs])
        n = med([run[0][key][2] for run in runs])
        mean = med([run[0][key][3] for run in runs])
        p10 = med([run[0][key][4] for run in runs])
        summary[key] = (m, p, mean, p10)
        per = ", ".join("%.3f" % run[0][key][0] for run in runs)
        lines.append("| %s | %s | %.3f | %.3f | %.3f | %.3f | %d | %s |" % (key, what, m, p, mean, p10, n, per))
    lines.append("")
    lines.append("## Group commit: N writers sharing one fdatasync")
    lines.append("")
    lines.append("| record | N | ops/s | records per sync | per-run ops/s |")
    lines.append("|---|--:|--:|--:|---|")
    gsum = {}
    for size, n in GROUPS:
        ops = med([run[1][(size, n)][0] for run in runs])
        per_sync = med([run[1][(size, n)][1] for run in runs])
        gsum[(size, n)] = ops
        per = ", ".join("%.0f" % run[1][(size, n)][0] for run in runs)
        lines.append("| %d KiB | %d | %.0f | %.1f | %s |" % (size // KIB, n, ops, per_sync, per))
    bw = med([run[2] for run in runs])
    lines.append("")
    lines.append("Sequential write bandwidth (64 MiB in 1 MiB writes + fdatasync): **%.0f MiB/s** "
                 "(per run: %s)." % (bw, ", ".join("%.0f" % run[2] for run in runs)))
    lines.append("")
    lines.append("## Floors for the benchmark sets (instances/s; the most the disk allows)")
    lines.append("")
    lines.append("One association waits for each acknowledgement, so its floor is 1000 / latency (ms); "
                 "the median is what this machine gave under its load, p10 approximates a quiet "
                 "machine (the wake-up row shows how much waiting for a CPU is in "
                 "the median). Four associations share syncs: the group-commit rate for N=4.")
    lines.append("")
    lines.append("| set | mode | today's commit (d*) median / p10 | journal, one sync each: median / p10 | journal, group commit |")
    lines.append("|---|---|--:|--:|--:|")
    s9, s512 = 9 * KIB + KIB, 512 * KIB + KIB
    f = lambda key: "%.0f / %.0f" % (1000 / summary[key][0], 1000 / summary[key][3])
    lines.append("| 5000 x 9 KiB | 1 assoc | %s | %s (a9) | %.0f (N=1) |" % (f("d9"), f("a9"), gsum[(s9, 1)]))
    lines.append("| 5000 x 9 KiB | 4 parallel | | | %.0f (N=4) |" % gsum[(s9, 4)])
    lines.append("| 1000 x 512 KiB | 1 assoc | %s | inline %s (a512); by reference %s (r512) | %.0f (N=1, inline) |"
                 % (f("d512"), f("a512"), f("r512"), gsum[(s512, 1)]))
    lines.append("| 1000 x 512 KiB | 4 parallel | | | %.0f (N=4, inline) |" % gsum[(s512, 4)])
    lines.append("")
    lines.append("Bandwidth bound for 512 KiB instances: %.0f/s written once (by reference), %.0f/s written "
                 "twice (inline: journal, then the object file)." % (bw * 2, bw))
    lines.append("")
    lines.append("\"today's commit\" is the durable part of one instance's acknowledgement today, done "
                 "serially; \"group commit\" is what N Python threads reach (the GIL and thread wake-ups "
                 "are part of it, so it understates a Rust implementation).")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "fsync-floor-%s.md" % started.strftime("%Y-%m-%d"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
        print("wrote %s" % out, file=sys.stderr)


if __name__ == "__main__":
    main()
