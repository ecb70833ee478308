"""Encoding a chunk while other threads change its finished spans' tags (a
late ``set_tag`` from a background thread on ``current_root_span()``): the
payload is always well-formed msgpack and nothing crashes. Run in a
subprocess under ``-X dev`` and ``PYTHONMALLOC=debug``, so a crash is a
failed test instead of a dead suite (issue 12, finding 1: the C v0.5 encoder
held borrowed tags across the string table's Python callback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.utils import REPO, assert_clean_output

SCRIPT = r"""
import sys, threading, msgpack
sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
from tracer import encoding
from tracer.span import RECORD_LEN
payload_cls = getattr(encoding, PAYLOAD)

def chunk():
    out = []
    for i in range(20):
        out += [1, i + 1, 0, "svc", "op", "res", "web", 1, 1, 0, {"k%d" % j: "v%d" % j for j in range(4)}, {"m": 1.0}]
    return out

stop = threading.Event()
chunks = [chunk() for _ in range(4)]

def mutate(n):
    i = 0
    while not stop.is_set():
        for c in chunks:
            for s in range(0, len(c), RECORD_LEN):
                meta, metrics = c[s + 10], c[s + 11]
                key = "late%d_%d" % (n, i % 50)
                meta[key] = "new value %d" % i   # a new string: the encoder's add() path
                metrics[key] = i
                if i % 3 == 0:
                    meta.pop(key, None)
                    metrics.pop(key, None)
        i += 1

threads = [threading.Thread(target=mutate, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
try:
    for _ in range(ROUNDS):
        payload = payload_cls()
        for c in chunks:
            payload.put(c)
        body = payload.finish()
        msgpack.unpackb(body, strict_map_key=False)  # ExtraData / malformed raises
finally:
    stop.set()
    for t in threads:
        t.join()
print("ok")
"""


@pytest.mark.parametrize("payload", ["PayloadV05", "PayloadV04"])
def test_encoding_while_other_threads_tag_finished_spans(payload: str) -> None:
    code = SCRIPT.replace("PAYLOAD", repr(payload)).replace("ROUNDS", "150")
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONMALLOC": "debug"}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr[-3000:]
    assert_clean_output(proc.stderr)
