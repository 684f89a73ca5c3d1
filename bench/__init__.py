"""xmine's benchmarks. Run them from the repository root as modules, e.g. `python -m bench.run --help`."""

from __future__ import annotations
