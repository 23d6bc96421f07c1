"""``python -m server``: the same as ``avap-server``."""

from __future__ import annotations

import sys

from server.cli import main

sys.exit(main())
