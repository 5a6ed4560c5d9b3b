"""``python -m sweeper`` is the ``clipsweep`` command."""

import sys

from clipsweep.cli import main

sys.exit(main())
