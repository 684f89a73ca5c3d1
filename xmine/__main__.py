"""`python -m xmine ...` runs the command line."""

from __future__ import annotations

import sys

from xmine.cli import main

sys.exit(main())
