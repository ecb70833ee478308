"""Integration tests: one module per contrib package, plus the shared contract."""
