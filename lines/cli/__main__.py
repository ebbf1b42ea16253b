"""``python -m lines.cli``."""

import sys

from lines.cli import main

sys.exit(main())
