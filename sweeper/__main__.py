"""``python -m sweeper`` is the ``clipsweep`` command."""

import sys

from sweeper.cli import main

sys.exit(main())
