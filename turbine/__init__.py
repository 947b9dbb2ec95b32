"""Turbine: a publish/subscribe data turbine for laboratories.

The public API; everything else is private to the package.
"""

import sys as _sys
import types as _types
from typing import TYPE_CHECKING, Any

from ._constants import FLOAT64_CONTENT_TYPE
from ._constants import VERSION as __version__
from ._errors import (
    BrokerUnavailable,
    ConnectionFailed,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RequestFailed,
    TurbineError,
    leaves,
    unwrap,
)
from .client import (
    ChannelInfo,
    Client,
    Frame,
    FrameGroup,
    Gap,
    Source,
    SourceInfo,
    Subscription,
    open_client,
    parse_address,
)
from .names import InvalidName

if TYPE_CHECKING:
    from ._blocking import open_file, run_blocking
    from ._clock import wall_time
    from ._retry import Backoff
    from ._sync import BlockingClient, connect
    from .command import Command, NoReply, Reply, send_command
    from .component import Component, command
    from .server import BrokerConfig, serve_turbine
    from .settings import ConfigError

#: Names imported on first use, by the module that defines them: a client
#: (``import turbine``, then ``open_client``) does not load the broker, the
#: component framework or their dependencies (``python -X importtime``).
_LAZY = {
    "open_file": "._blocking",
    "run_blocking": "._blocking",
    "Command": ".command",
    "NoReply": ".command",
    "Reply": ".command",
    "send_command": ".command",
    "wall_time": "._clock",
    "Backoff": "._retry",
    "BlockingClient": "._sync",
    "connect": "._sync",
    "Component": ".component",
    "command": ".component",
    "BrokerConfig": ".server",
    "serve_turbine": ".server",
    "ConfigError": ".settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'turbine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(_types.ModuleType):
    """``turbine.command`` is the component framework's decorator (see _LAZY), not the
    module of that name: importing that module (on first use of ``send_command``,
    say) does not bind it here, as the import system does with a submodule."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "command" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


__all__ = [
    "Backoff",
    "FLOAT64_CONTENT_TYPE",
    "Command",
    "Component",
    "ConfigError",
    "NoReply",
    "Reply",
    "command",
    "send_command",
    "BlockingClient",
    "BrokerConfig",
    "ChannelInfo",
    "Client",
    "BrokerUnavailable",
    "ConnectionFailed",
    "Frame",
    "FrameGroup",
    "Gap",
    "InvalidName",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestFailed",
    "Source",
    "SourceInfo",
    "Subscription",
    "TurbineError",
    "__version__",
    "leaves",
    "unwrap",
    "open_file",
    "run_blocking",
    "wall_time",
    "connect",
    "open_client",
    "parse_address",
    "serve_turbine",
]
