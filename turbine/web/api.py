"""The viewer's HTTP API and page, as one Starlette application over one broker connection.

Routes (documented in ``docs/http.rst``; ``/api/openapi.json`` describes them):

``GET /api/sources``, ``GET /api/channel/{source}/{channel}``,
``GET /api/frame/{source}/{channel}``, ``GET /api/stream``,
``POST /api/command/{target}``, ``GET``/``POST /api/markers`` (:mod:`.markers`),
and the page under ``/``.

Every error is JSON, ``{"error": "<what was wrong>"}``, with a 4xx/5xx status.
"""

from __future__ import annotations

import importlib.util
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._constants import FLOAT64_CONTENT_TYPE
from .._errors import RequestFailed, TurbineError
from .._values import value_dict
from ..client import Client, Frame
from ..command import NoReply, send_command
from ..names import compile_pattern
from ..render import as_dict, is_numeric, pcm_format
from ._http import BadRequest, json_body
from .decimate import decimate, from_summaries
from .levels import pcm_level
from .live import Feeds, LiveResponse, RecentFrames, ReplayResponse
from .markers import Markers
from .metrics import metrics_text

#: Points a channel read returns at most when the caller gives no ``max_points``.
DEFAULT_MAX_POINTS = 2000
#: Samples in a time range from which a plot reads the broker's block summaries instead
#: of every sample (1 M samples took 0.33 s to read and decimate; a day at 1 kHz, 86 M).
SUMMARIZED_FROM_SAMPLES = 1_000_000
#: Frames a channel read returns when it gives no selection (the newest N).
DEFAULT_NEWEST = 100
#: Seconds before ``at`` that ``/api/frame?at=`` looks back, widening until it finds a frame.
FRAME_AT_LOOKBACK_S = (1.0, 60.0, 3600.0, 86400.0, 30 * 86400.0)
#: The replay speeds a stream accepts (times real time).
MIN_SPEED, MAX_SPEED = 0.1, 100.0
#: Seconds a posted command waits for its reply unless the body says ``timeout``.
DEFAULT_COMMAND_WAIT_S = 10.0

_STATIC = resources.files(__package__) / "static"


def _plotly_js() -> Path:
    """plotly.js as the installed ``plotly`` package ships it (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise HTTPException(500, "the plotly package is not installed: pip install plotly")
    return Path(list(spec.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"


def _number(request: Request, name: str, kind: type[int] | type[float]) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise BadRequest(f"{name} must be {what}, got {raw!r}") from None
    if not math.isfinite(value) or (kind is int and value < 0):
        raise BadRequest(f"{name} must be a finite number of 0 or more, got {raw!r}")
    return value


def _paths(request: Request, required: bool = True) -> list[str]:
    patterns = [_pattern(p) for p in request.query_params.getlist("path")]
    if not patterns and required:
        raise BadRequest("give at least one path=SOURCE/CHANNEL (wildcards allowed)")
    return patterns


def _pattern(text: str) -> str:
    try:
        compile_pattern(text)
    except TurbineError as exc:
        raise BadRequest(str(exc)) from None
    return text


class Viewer:
    """The handlers, holding the broker connection they share."""

    def __init__(self, client: Client, nursery: trio.Nursery) -> None:
        self.client = client
        self.recent = RecentFrames()
        self.feeds = Feeds(client, self.recent, nursery)

    async def sources(self, request: Request) -> Response:
        pattern = _pattern(request.query_params.get("pattern", "*"))
        infos = await self.client.list_sources(pattern)
        return JSONResponse([value_dict(i) for i in infos])

    async def whoami(self, request: Request) -> Response:
        """The viewer's user and the rights the broker gave it at login (none without auth)."""
        rights = self.client.rights
        return JSONResponse(
            {"auth": rights is not None, "user": self.client.user, "rights": rights}
        )

    async def channel(self, request: Request) -> Response:
        source, channel = request.path_params["source"], request.path_params["channel"]
        path = f"{source}/{channel}"
        choice = {
            "newest": _number(request, "newest", int),
            "start": _number(request, "start", float),
            "after": _number(request, "after", int),
        }
        given = [k for k, v in choice.items() if v is not None]
        if len(given) > 1:
            raise BadRequest(f"give one of newest, start or after, not {' and '.join(given)}")
        duration = _number(request, "duration", float)
        if duration is not None and choice["start"] is None:
            raise BadRequest("duration needs start")
        if not given:
            choice["newest"] = DEFAULT_NEWEST
        max_points = _number(request, "max_points", int) or DEFAULT_MAX_POINTS
        if max_points < 2:
            raise BadRequest(f"max_points must be at least 2, got {max_points}")
        start = choice["start"]
        if start is not None and duration:
            summed = await self._summarized(source, channel, start, duration, max_points)
            if summed is not None:
                return JSONResponse(summed)
        frames = await self._fetch_one_channel(path, duration=duration, **choice)
        body: dict[str, Any] = {"source": source, "channel": channel, "frames": len(frames)}
        if frames:
            body["content_type"] = frames[0].content_type
            body["first_seq"], body["last_seq"] = frames[0].seq, frames[-1].seq
        if frames and is_numeric(frames[0].content_type):
            series = decimate(frames, max_points)
            body.update(samples=series.samples, t=series.t, v=series.v)
            body["decimated"] = series.decimated
        elif frames and pcm_format(frames[0].content_type):
            body["items"] = [
                {**as_dict(f), "level": pcm_level(f.data, f.content_type)} for f in frames
            ]
        else:
            body["items"] = [as_dict(f) for f in frames]
        return JSONResponse(body)

    async def _summarized(
        self, source: str, channel: str, start: float, duration: float, max_points: int
    ) -> dict[str, Any] | None:
        """A long range of a numeric channel from the broker's block summaries (min,
        max, first, last per block, kept at put): per column its minimum and maximum,
        without reading the samples.  None where every sample is read instead: fewer
        than :data:`SUMMARIZED_FROM_SAMPLES`, not a numeric channel, or frames in the
        range older than the summaries (an archive from before summary files)."""
        found = await self.client.summarize(
            f"{source}/{channel}", start=start, duration=duration, columns=max_points // 2
        )
        mine = [s for s in found if s["source"] == source and s["channel"] == channel]
        if not mine or mine[0]["since"] is None:
            return None
        summary = mine[0]
        samples = int(sum(c[2] for c in summary["columns"]))
        if samples < SUMMARIZED_FROM_SAMPLES:
            return None
        if summary["since"] > start and await self._stored_before(
            source, channel, summary["since"]
        ):
            return None
        series = from_summaries(summary["columns"], samples)
        return {
            "source": source,
            "channel": channel,
            "content_type": FLOAT64_CONTENT_TYPE,
            "summarized": True,
            "blocks": summary["blocks"],
            "samples": series.samples,
            "t": series.t,
            "v": series.v,
            "decimated": series.decimated,
        }

    async def _stored_before(self, source: str, channel: str, t: float) -> bool:
        """Whether the broker holds frames of the channel stamped before ``t`` (memory or disk)."""
        for info in await self.client.list_sources(source):
            for c in info.channels if info.name == source else ():
                oldest = [c.first_time, (c.disk or {}).get("first_time")]
                if c.name == channel and min((x for x in oldest if x is not None), default=t) < t:
                    return True
        return False

    async def _fetch_one_channel(self, path: str, **selection: Any) -> list[Frame]:
        if not await self.client.list_sources(path.split("/", 1)[0]):
            raise HTTPException(404, f"no source {path.split('/', 1)[0]!r}")
        return await self.client.fetch(path, **selection)

    async def frame(self, request: Request) -> Response:
        source, channel = request.path_params["source"], request.path_params["channel"]
        path = f"{source}/{channel}"
        seq, at = _number(request, "seq", int), _number(request, "at", float)
        if seq is not None and at is not None:
            raise BadRequest("give seq or at, not both")
        found: Frame | None = None
        if at is not None:
            found = await self._frame_at(path, at)
            if found is None:
                raise HTTPException(404, f"{path} has no frame at or before {at!r}")
        elif seq is None:
            newest = await self._fetch_one_channel(path, newest=1)
            found = newest[-1] if newest else None
        elif (found := self.recent.get(path, seq)) is None and seq > 0:
            after = await self._fetch_one_channel(path, after=seq - 1)
            found = after[0] if after and after[0].seq == seq else None
        if found is None:
            which = "no frames" if seq is None else f"no frame #{seq} (evicted or not yet put)"
            raise HTTPException(404, f"{path} has {which}")
        return Response(
            found.data,
            media_type=found.content_type,
            headers={
                "x-turbine-seq": str(found.seq),
                "x-turbine-timestamp": repr(found.timestamp),
                "cache-control": "max-age=3600" if seq is not None else "no-cache",
            },
        )

    async def _frame_at(self, path: str, at: float) -> Frame | None:
        """The newest frame stamped at or before ``at``: a time range widened until one is found."""
        exact = await self._fetch_one_channel(path, start=at, duration=0)
        if exact:
            return exact[-1]
        for back in FRAME_AT_LOOKBACK_S:
            if frames := await self.client.fetch(path, start=at - back, duration=back):
                return frames[-1]
        return None

    async def stream(self, request: Request) -> Response:
        watched = [_pattern(p) for p in request.query_params.getlist("watch")]
        patterns = _paths(request) if not watched else _paths(request, required=False)
        start, speed = _number(request, "from", float), _number(request, "speed", float)
        if start is None:
            if speed is not None:
                raise BadRequest("speed needs from (the archive time to play from)")
            return LiveResponse(self.feeds, patterns, watched)
        patterns += [p for p in watched if p not in patterns]  # a replay plays every frame
        speed = 1.0 if speed is None else speed
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise BadRequest(
                f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, got {speed:g}"
            )
        return ReplayResponse(self.client, patterns, start, speed)

    async def time_range(self, request: Request) -> Response:
        """The stored time span of the channels on the given paths: oldest and newest frame."""
        first: list[float] = []
        last: list[float] = []
        for pattern in _paths(request):
            first += [f.timestamp for f in await self.client.fetch(pattern, oldest=1)]
            last += [f.timestamp for f in await self.client.fetch(pattern, newest=1)]
        return JSONResponse({"start": min(first, default=None), "end": max(last, default=None)})

    async def command(self, request: Request) -> Response:
        target = request.path_params["target"]
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("verb"), str):
            raise BadRequest('the body must be a JSON object with a string "verb"')
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise BadRequest('"args" must be a list and "kwargs" an object')
        wait = body.get("timeout", DEFAULT_COMMAND_WAIT_S)
        if not isinstance(wait, int | float) or not 0 < wait <= 300:
            raise BadRequest(f'"timeout" must be seconds between 0 and 300, got {wait!r}')
        try:
            reply = await send_command(
                self.client, target, body["verb"], *args, wait=float(wait), **kwargs
            )
        except NoReply as exc:
            raise HTTPException(504, str(exc)) from None
        return JSONResponse(json.loads(reply.to_json()))

    async def openapi(self, request: Request) -> Response:
        return Response((_STATIC / "openapi.json").read_bytes(), media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        return Response(await metrics_text(self.client), media_type=CONTENT_TYPE_LATEST)

    async def plotly(self, request: Request) -> Response:
        return FileResponse(str(_plotly_js()), media_type="text/javascript")

    async def index(self, request: Request) -> Response:
        return FileResponse(str(_STATIC / "index.html"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _turbine_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RequestFailed):
        status = {"missing": 404, "access": 403}.get(exc.code or "", 400)
    else:
        status = 502  # the broker connection itself failed
    return JSONResponse({"error": str(exc)}, status_code=status)


def create_app(client: Client, nursery: trio.Nursery) -> Starlette:
    """The viewer's application over ``client``, a connection to the broker it shows.

    The live streams' shared subscriptions run in ``nursery``.
    """
    v, markers = Viewer(client, nursery), Markers(client)
    routes = [
        Route("/", v.index),
        Route("/api/openapi.json", v.openapi),
        Route("/metrics", v.metrics),
        Route("/vendor/plotly.min.js", v.plotly),
        Route("/api/sources", v.sources),
        Route("/api/whoami", v.whoami),
        Route("/api/channel/{source}/{channel}", v.channel),
        Route("/api/frame/{source}/{channel}", v.frame),
        Route("/api/stream", v.stream),
        Route("/api/range", v.time_range),
        Route("/api/markers", markers.handle, methods=["GET", "POST"]),
        Route("/api/command/{target}", v.command, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_STATIC)), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, TurbineError: _turbine_error},
    )
