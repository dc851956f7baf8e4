"""``python -m graphprune`` is the ``graphprune`` command line."""

import sys

from .cli import main

sys.exit(main())
