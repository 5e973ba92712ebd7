"""``python -m edgedx.ray ARGS`` is ``edgedx classify --ray ARGS``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from edgedx.cli import main as cli_main

    return cli_main(["classify", "--ray", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
