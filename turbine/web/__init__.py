"""The web viewer: ``turbine web``, a broker client that serves an HTTP API and a page.

Nothing here is imported by ``import turbine``: the viewer's dependencies
(Starlette, Hypercorn, prometheus_client, the plotting library's JS) are
loaded only by the process that serves it.

* :mod:`.decimate`: min/max decimation of numeric sample blocks (pure, sync);
* :mod:`.live`: one Server-Sent Events stream per tab, with its own bounded queue;
* :mod:`.api`: the Starlette application (routes, JSON errors, OpenAPI);
* :mod:`.serve`: ``serve_web`` runs it under Hypercorn's trio worker.

The HTTP API is documented in ``docs/http.rst``.
"""
