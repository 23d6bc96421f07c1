"""``python -m exporter``: the same as ``avap-export``."""

from __future__ import annotations

from exporter.cli import main

raise SystemExit(main())
