"""Training loops: the Siamese (NGAME stage 1) loop and the shortlist classifier loop."""

from __future__ import annotations
