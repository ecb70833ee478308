"""Builds the optional C version of the span hot path (tracer/_cspan.c).

Everything else is in pyproject.toml. Without a C compiler the build skips
the extension (``optional=True``) and the tracer runs its pure-Python code.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tracer._cspan", ["tracer/_cspan.c"], optional=True)])
