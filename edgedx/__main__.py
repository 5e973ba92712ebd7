"""``python -m edgedx`` and the ``edgedx`` console script: signal handlers first, then the CLI."""

import sys


def run() -> int:
    from edgedx import interrupt

    interrupt.install_early()  # before the CLI's imports: an early SIGTERM or Ctrl-C exits 130 quietly
    from edgedx.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
