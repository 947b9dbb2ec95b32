"""The event markers every viewer shares: JSON frames on one shared source
(type ``web``) that the broker archives like any, ``GET``/``POST /api/markers``."""

from __future__ import annotations

import json
import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._clock import wall_time
from .._errors import RequestFailed
from ..client import Client, Source
from ._http import BadRequest, json_body

#: Where every viewer keeps the event markers: a shared source (type ``web``), archived like any.
MARKERS_SOURCE, MARKERS_CHANNEL = "web_markers_data_source", "markers.json"
#: Markers ``GET /api/markers`` reads at most (the newest), and a label's longest.
MARKERS_READ, MARKER_LABEL_CHARS = 1000, 200


class Markers:
    """The markers route over the viewer's broker connection; it opens the shared
    source (then holds it as :attr:`source`) only when no one else holds it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.source: Source | None = None

    async def handle(self, request: Request) -> Response:
        """Every marker (the newest :data:`MARKERS_READ`), in time order; POST drops one."""
        if request.method == "POST":
            return await self._drop(request)
        frames = await self.client.fetch(f"{MARKERS_SOURCE}/{MARKERS_CHANNEL}", newest=MARKERS_READ)
        found = []
        for f in frames:
            try:
                m = json.loads(f.data)
            except ValueError:
                continue  # a shared source: anyone may have put anything there
            if isinstance(m, dict) and isinstance(m.get("time"), int | float):
                found.append(
                    {"time": m["time"], "label": str(m.get("label", "")), "by": m.get("by")}
                )
        return JSONResponse(sorted(found, key=lambda m: m["time"]))

    async def _drop(self, request: Request) -> Response:
        body = await json_body(request)
        label = body.get("label") if isinstance(body, dict) else None
        if not isinstance(label, str) or not 0 < len(label.strip()) <= MARKER_LABEL_CHARS:
            raise BadRequest(f'give a "label": text of 1 to {MARKER_LABEL_CHARS} characters')
        when = body.get("time", wall_time())
        if not isinstance(when, int | float) or not math.isfinite(when):
            raise BadRequest(f'"time" must be seconds since the epoch, got {when!r}')
        marker = {"time": float(when), "label": label.strip(), "by": self.client.user or "web"}
        data = json.dumps(marker).encode()
        path = f"{MARKERS_SOURCE}/{MARKERS_CHANNEL}"
        try:  # another viewer may hold the shared source: put to it as anyone may
            await self.client.put(path, data)
        except RequestFailed as exc:
            if exc.code != "missing":
                raise
            try:
                self.source = await self.client.open_source(
                    MARKERS_SOURCE, channels={MARKERS_CHANNEL: "application/json"}, shared=True
                )
            except RequestFailed as refused:
                if refused.code != "name":
                    raise
                raise BadRequest(
                    f"markers live on {MARKERS_SOURCE}, and this broker has no source type "
                    "'web': start it with --type web (a site file: [broker] types = [..., \"web\"])"
                ) from None
            await self.source.put(MARKERS_CHANNEL, data)
        await self.client.flush()
        return JSONResponse(marker, status_code=201)
