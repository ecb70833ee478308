"""Builds the optional C versions of the span hot path (tracer/_cspan*.c) and
of the chunk encoders (tracer/_cencode.c), and the receiver's msgpack
unpacking, packing, normalize, stats, insights and duplicate-id fast paths (agent_sim/_cdecode*.c).

Everything else is in pyproject.toml. Without a C compiler the build skips
them (``optional=True``) and the tracer runs its pure-Python code.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tracer._cspan",
            ["tracer/_cspan.c", "tracer/_cspan_span.c", "tracer/_cspan_trace.c", "tracer/_cspan_method.c",
             "tracer/_cspan_with.c", "tracer/_cspan_ids.c", "tracer/_cspan_call.c",
             "tracer/_cspan_queue.c", "tracer/_cspan_body.c", "tracer/_cspan_flask.c"],
            depends=["tracer/_cmodule.h", "tracer/_cspan.h"],
            optional=True,
        ),
        Extension(
            "tracer._cencode",
            ["tracer/_cencode.c", "tracer/_cencode_tags.c", "tracer/_cencode_payload.c",
             "tracer/_cencode_process.c"],
            depends=["tracer/_cmodule.h", "tracer/_cencode.h"],
            optional=True,
        ),
        Extension(
            "agent_sim._cdecode",
            ["agent_sim/_cdecode.c", "agent_sim/_cdecode_pack.c", "agent_sim/_cdecode_normalize.c",
             "agent_sim/_cdecode_insights.c", "agent_sim/_cdecode_ingest.c", "agent_sim/_cdecode_stats.c"],
            depends=["agent_sim/_cdecode.h"],
            optional=True,
        ),
    ]
)
