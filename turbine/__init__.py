"""Turbine: a publish/subscribe data turbine for laboratories.

The public API; everything else is private to the package.
"""

from ._blocking import open_file, run_blocking
from ._clock import wall_time
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
from ._retry import Backoff
from ._sync import BlockingClient, connect
from .client import (
    ChannelInfo,
    Client,
    Frame,
    Gap,
    Source,
    SourceInfo,
    Subscription,
    open_client,
    parse_address,
)
from .command import Command, NoReply, Reply, send_command
from .component import Component, command
from .names import InvalidName
from .server import BrokerConfig, serve_turbine
from .settings import ConfigError

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
