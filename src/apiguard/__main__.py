"""`python -m apiguard`: the command line."""

import sys

from apiguard.cli import main

sys.exit(main())
