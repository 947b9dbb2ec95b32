"""The control-system simulator as a turbine component, ``ntcp_<name>``.

It serves the NTCP LabVIEW-plugin protocol on ``host:port`` exactly as the
plain simulator does, and on the turbine:

* its data source publishes every control point's measured values every
  ``interval`` seconds, one float64 frame per channel
  ``<controlPoint>.<axis>.<type>`` (channel names may not hold ``/``);
* its commands are ``status`` (the rig's state among the component's) and
  ``set-limit CONTROL_POINT AXIS TYPE LO HI``.

The NTCP listener outlives broker reconnects: the rig does not stop serving
its clients because the turbine went away.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from components.ntcp.channels import measurement_channels, measurement_frames
from turbine import Component, command
from turbine.settings import as_tuple, check

from .rig import Rig, RigConfig, RigError
from .server import serve_ntcp_sim

__all__ = ["NtcpSim"]


@attrs.frozen
class NtcpSimSettings:
    """Where the simulator serves NTCP, the rig it simulates, how often it publishes."""

    host: str = "127.0.0.1"
    port: int = 6000
    control_points: tuple[str, ...] = attrs.field(default=("MDL-00-01",), converter=as_tuple)
    seed: int = 0
    displacement_speed: float = RigConfig().displacement_speed
    rotation_speed: float = RigConfig().rotation_speed
    lapse_timeout: float = RigConfig().lapse_timeout
    interval: float = attrs.field(default=0.1, validator=check(lambda v: v > 0, "above 0 s"))

    def __attrs_post_init__(self) -> None:
        try:
            self.rig_config()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad simulator settings: {exc}") from None

    def rig_config(self) -> RigConfig:
        return RigConfig(
            control_points=self.control_points,
            seed=self.seed,
            displacement_speed=self.displacement_speed,
            rotation_speed=self.rotation_speed,
            lapse_timeout=self.lapse_timeout,
        )


class NtcpSim(Component):
    """Control-system simulator: a test rig behind the NTCP ASCII protocol, publishing its measurements."""

    type = "ntcp"
    Settings = NtcpSimSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rig = Rig(self.config.rig_config())
        self.channels = measurement_channels(self.rig.config.control_points)
        self.port: int | None = None

    async def start_lasting_work(self, nursery: trio.Nursery) -> None:
        """Serve NTCP (``self.port``), whether or not the broker is there.

        Raises:
            OSError: the NTCP address cannot be bound.
        """
        self.port = await nursery.start(
            serve_ntcp_sim, self.rig, self.config.host, self.config.port
        )
        self.log.info("serving NTCP on %s:%d", self.config.host, self.port)

    async def run(self) -> None:
        while True:
            for cp in self.rig.config.control_points:
                for channel, data in measurement_frames(self.rig.read_control_point(cp)):
                    await self.data.put(channel, data)
            await trio.sleep(self.config.interval)

    def status(self) -> dict[str, Any]:
        return super().status() | {"ntcp_port": self.port, "rig": self.rig.status()}

    @command("set-limit", help="change the limits of one control point, axis and type")
    async def set_limit(
        self, control_point: str, axis: str, type: str, lo: float, hi: float
    ) -> str:  # noqa: A002
        try:
            self.rig.set_limit(control_point, axis, type, lo, hi)
        except RigError as exc:
            raise ValueError(f"set-limit: {exc.reason}") from None
        return f"{control_point} {axis} {type} limits are now [{lo!r}, {hi!r}]"
