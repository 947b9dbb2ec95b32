"""The peer harness's turbine rows with the durable archive on (``turbine serve --data-dir``).

The issue's target: with ``--data-dir`` every harness row stays within 25 % of
the memory-only figure.  This is the harness's own turbine adapter
(``../shared/bench/turbine_adapter.py``, used unchanged) with one difference:
the broker it starts keeps every source's frames on disk too, in the test's
work directory, with the default ``--sync always`` (a flush is acknowledged
once on stable storage).  Run both rows in one harness run::

    BENCH=../shared/bench
    /tmp/benchvenv/bin/python $BENCH/run_bench.py --no-physical \\
        --peers $BENCH/turbine_adapter.py:TurbineAdapter,benchmarks/harness_data_dir.py:TurbineDataDirAdapter \\
        --out /tmp/data-dir-rows.md

The harness directory is ``TURBINE_PEER_BENCH`` if set, else ``../shared/bench``
beside the repository.  The bench venv's turbine is the one it has installed
(``pip install -e`` of a checkout).
"""

from __future__ import annotations

import os
import sys
from typing import Any

BENCH = os.environ.get("TURBINE_PEER_BENCH") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench"
)
if not os.path.exists(os.path.join(BENCH, "turbine_adapter.py")):
    raise SystemExit(f"no peer harness at {BENCH}: set TURBINE_PEER_BENCH to its directory")
sys.path.insert(0, os.path.abspath(BENCH))

from turbine_adapter import TurbineAdapter  # noqa: E402  (the harness's, not a package)


class TurbineDataDirAdapter(TurbineAdapter):
    """The harness's turbine adapter, its broker started with ``--data-dir``."""

    name = "turbine-data-dir"
    description = "turbine serve --data-dir (durable archive, --sync always) + turbine client API"

    def spawn_server(self, cmd: list[str], logname: str, env: dict[str, str] | None = None) -> Any:
        data_dir = os.path.join(self.workdir, "turbine-data")
        return super().spawn_server([*cmd, "--data-dir", data_dir], logname, env)
