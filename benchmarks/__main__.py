"""``python -m benchmarks``: the whole suite (``--quick`` for the short version)."""

import sys

from .suite import main

sys.exit(main())
