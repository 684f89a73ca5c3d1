#!/usr/bin/env bash
# Create bench/.venv-peers with the peer XMC libraries used by bench/peers.py.
#
# libpecos pulls a large CUDA torch + transformers and forces numpy<2, so the peers live in
# their own venv and never touch the main environment. Idempotent: skipped when
# bench/.venv-peers/.ok exists (delete it to reinstall).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-peers"
PYTHON="${PYTHON:-python3}"

if [[ -f "$VENV/.ok" ]]; then
    echo "peers venv ready: $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install libpecos==1.2.8 omikuji==0.5.2 napkinxc==0.7.2 scipy numpy

# Smoke test: every peer imports.
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version

import napkinxc  # noqa: F401
import numpy  # noqa: F401
import omikuji  # noqa: F401
from pecos.xmc.xlinear.model import XLinearModel  # noqa: F401

print({p: version(p) for p in ("libpecos", "omikuji", "napkinxc", "numpy", "scipy")})
EOF

touch "$VENV/.ok"
echo "peers venv ready: $VENV"
