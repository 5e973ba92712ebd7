import sys

from edgedx.cli import main

sys.exit(main())
