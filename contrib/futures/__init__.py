"""concurrent.futures integration: ``ThreadPoolExecutor.submit`` carries the
caller's active span into the worker thread. See ``patch.py``.
"""
