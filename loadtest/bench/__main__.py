"""``python -m loadtest.bench [NAME ...]``: every benchmark, or the named ones (``--help`` lists them)."""

import sys

from .suite import main

sys.exit(main())
