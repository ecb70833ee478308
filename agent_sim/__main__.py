"""``python -m agent_sim``: the CLI when present, else the server alone."""

from __future__ import annotations

import sys


def _main() -> int:
    try:
        from agent_sim.cli import main
    except ImportError:
        from agent_sim.serve import serve_main

        return serve_main(sys.argv[1:])
    return main(sys.argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(_main())
