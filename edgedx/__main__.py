"""``python -m edgedx`` and the ``edgedx`` console script: signal handlers first, then the CLI."""

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
    return code


if __name__ == "__main__":
    sys.exit(run())
