"""``python -m localsync.cli``: the ``localsync`` command."""

import sys

from localsync.cli.main import main

sys.exit(main())
