"""``python -m components.mirror --from HOST:PORT --to HOST:PORT PATTERN...``."""

from __future__ import annotations

from turbine._mirror_cli import mirror

if __name__ == "__main__":
    mirror(prog_name="python -m components.mirror")
