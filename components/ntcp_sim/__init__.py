"""A control-system simulator speaking the NTCP LabVIEW-plugin protocol.

Run it with ``python -m components.ntcp_sim --port 6000``.
"""

from .commands import COMMANDS, run_command
from .rig import NOISE_CLIP, Limit, Rig, RigConfig, RigError, TransactionState
from .server import SimConnection, serve_ntcp_sim

__all__ = [
    "COMMANDS",
    "NOISE_CLIP",
    "Limit",
    "Rig",
    "RigConfig",
    "RigError",
    "SimConnection",
    "TransactionState",
    "run_command",
    "serve_ntcp_sim",
]
