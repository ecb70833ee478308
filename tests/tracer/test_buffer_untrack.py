"""The pure-Python path untracks a trace's chunk list once the trace's
``UNTRACK_AT``-th span starts (tracer.buffer.untrack_list, ctypes'
``PyObject_GC_UnTrack``, as tracer/_cspan.c does in C): young collections no
longer walk each value of every list not yet sent. Smaller traces keep a
tracked list (the call costs more than it saves); what the list holds is
still sent as it was, and a cycle through a tag dict is still collected
once the chunk is gone. Run in a subprocess with ``TRACER_PURE_PYTHON=true``
(the untracking is off with the C span, which untracks in C)."""

from __future__ import annotations

from tests.utils import run_python

CODE = r"""
import gc, weakref
from tracer import buffer
from tracer._tracer import Tracer
from tracer.span import records

assert buffer.untrack_list is not None and buffer.UNTRACK_AT == 8

class Sink:
    def __init__(self):
        self.chunks = []
    def write(self, trace, chunk):
        self.chunks.append((gc.is_tracked(chunk), chunk))
    def stop(self, timeout):
        pass

class Holder:
    pass

sink = Sink()
t = Tracer(writer=sink)
t._buffer.sink = sink
tracked = []
with t.trace("root", service="svc") as root:
    for i in range(10):
        with t.trace("child") as span:
            span.set_tag("i", str(i))
            if i == 3:
                # A cycle through a tag dict: found once the chunk is freed.
                holder = Holder()
                holder.meta = span.meta
                span.meta["holder"] = holder
                ref = weakref.ref(holder)
                del holder
        tracked.append(gc.is_tracked(root._trace.finished))
with t.trace("small") as small:
    with t.trace("child"):
        pass
# start_span's children too.
root2 = t.start_span("r2")
kids = [t.start_span("k", child_of=root2) for _ in range(6)]
assert gc.is_tracked(root2._trace.finished) and len(kids) == 6
kids.append(t.start_span("k", child_of=root2))
assert not gc.is_tracked(root2._trace.finished)
for kid in kids:
    kid.finish()
root2.finish()
print(tracked)
assert tracked == [True] * 6 + [False] * 4, tracked  # the 8th span of the trace is its 7th child
(big_tracked, big), (small_tracked, small_chunk), (r2_tracked, r2) = sink.chunks
assert not big_tracked and small_tracked and not r2_tracked and len(records(r2)) == 8
assert [r.name for r in records(big)] == ["child"] * 10 + ["root"]
assert [r.meta.get("i") for r in records(big)][:3] == ["0", "1", "2"]
gc.collect()
assert ref() is not None  # the chunk holds it
del sink.chunks[:], big, span
gc.collect()
assert ref() is None, gc.get_referrers(ref())
print("ok")
"""


def test_a_big_traces_list_is_untracked_and_sends_the_same_records() -> None:
    proc = run_python(CODE, env={"TRACER_PURE_PYTHON": "true"})
    assert proc.stdout.strip().endswith("ok")
