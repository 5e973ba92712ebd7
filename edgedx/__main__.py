"""``python -m edgedx`` and the ``edgedx`` console script: signal handlers first, then the CLI."""

import os
import sys


def run() -> int:
    from edgedx import interrupt

    interrupt.install_early()  # before the CLI's imports: an early SIGTERM or Ctrl-C exits 130 quietly
    from edgedx.cli import main

    try:
        code = main()
    except KeyboardInterrupt:  # a Ctrl-C between the CLI's own handlers: the same quiet 130
        print("edgedx: interrupted", file=sys.stderr)
        code = interrupt.EXIT_INTERRUPTED
    interrupt.block_at_exit()
    if code == interrupt.EXIT_INTERRUPTED:
        # Every record is written and closed: end here. Python's shutdown after an interrupted
        # extension import (seen with onnxruntime) can die by SIGINT instead of exiting 130.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(run())
