#!/usr/bin/env python3
"""Re-record the bundled example traces (needs root or ptrace rights, strace, perf, sqlite3, redis-server).

    PYTHONPATH=src python3 examples/record_examples.py [python|sqlite|redis ...]

Every trace is written to examples/<name>.jsonl with its examples/<name>.jsonl.vmpte.json samples. All network
traffic stays on 127.0.0.1; every scratch file lives in a fresh directory under /tmp.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from thpsim.trace.record import RecordResult, record

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
TOUCH = "perf"

PY_PROGRAM = """
import time
rows = [bytearray(1000) for _ in range(60000)]          # ~60 MB of small objects: malloc/brk + arenas
big = bytearray(96 << 20)                                # one 96 MiB buffer: its own mmap
for i in range(0, len(big), 4096):
    big[i] = 1
time.sleep(0.2)
del rows[::2]                                            # free half of the small objects
grown = bytearray(32 << 20)
grown += bytearray(64 << 20)                             # realloc -> mremap(MREMAP_MAYMOVE)
time.sleep(0.2)
"""

SQL = """
PRAGMA cache_size = -262144;
PRAGMA journal_mode = OFF;
PRAGMA temp_store = MEMORY;
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 150000)
INSERT INTO t SELECT x, hex(randomblob(16)), randomblob(400) FROM c;
CREATE INDEX t_k ON t(k);
SELECT count(*), sum(length(v)) FROM t;
"""


def _report(name: str, r: RecordResult) -> None:
    res = r.result
    size = os.path.getsize(r.trace_path)
    print(f"{name}: exit {r.returncode}, {res.summary()}, {r.samples} VmPTE samples, {size} bytes")
    for w in res.warnings[:5]:
        print("  warning:", w)


def rec_python() -> None:
    out = os.path.join(HERE, "python-list.jsonl")
    r = record([PYTHON, "-c", PY_PROGRAM], out, touch=TOUCH, notes=False, name="python-list")
    _report("python-list", r)


def rec_sqlite() -> None:
    tmp = tempfile.mkdtemp(prefix="thpsim-sqlite-")
    try:
        script = os.path.join(tmp, "fill.sql")
        with open(script, "w") as f:
            f.write(SQL)
        out = os.path.join(HERE, "sqlite-fill.jsonl")
        r = record(["/usr/bin/sqlite3", os.path.join(tmp, "fill.db"), f".read {script}"], out, touch=TOUCH,
                   notes=False, name="sqlite-fill", stdout=subprocess.DEVNULL)
        _report("sqlite-fill", r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    rng = random.Random()
    for _ in range(100):
        port = rng.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def rec_redis() -> None:
    tmp = tempfile.mkdtemp(prefix="thpsim-redis-")
    port = _free_port()
    cli = ["/usr/bin/redis-cli", "-h", "127.0.0.1", "-p", str(port)]
    out = os.path.join(HERE, "redis-bgsave.jsonl")
    server = ["/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
              "--dir", tmp, "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
              "--daemonize", "no", "--enable-debug-command", "local", "--logfile", os.path.join(tmp, "log")]
    box: dict[str, RecordResult] = {}
    th = threading.Thread(target=lambda: box.setdefault("r", record(server, out, touch=TOUCH, notes=False,
                                                                        name="redis-bgsave")))
    th.start()
    try:
        for _ in range(300):
            if subprocess.run([*cli, "PING"], capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        subprocess.run([*cli, "DEBUG", "POPULATE", "200000", "key", "300"], check=True, capture_output=True)
        before = subprocess.run([*cli, "LASTSAVE"], capture_output=True, text=True).stdout.strip()
        subprocess.run([*cli, "BGSAVE"], check=True, capture_output=True)
        # keep writing while the child snapshots (COW in the parent)
        subprocess.run([*cli, "DEBUG", "POPULATE", "20000", "more", "300"], capture_output=True)
        for _ in range(600):
            if subprocess.run([*cli, "LASTSAVE"], capture_output=True, text=True).stdout.strip() != before:
                break
            time.sleep(0.05)
        subprocess.run([*cli, "SHUTDOWN", "NOSAVE"], capture_output=True)
    finally:
        th.join(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    _report("redis-bgsave", box["r"])


if __name__ == "__main__":
    which = sys.argv[1:] or ["python", "sqlite", "redis"]
    for w in which:
        {"python": rec_python, "sqlite": rec_sqlite, "redis": rec_redis}[w]()
