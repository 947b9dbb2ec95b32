"""The JetStream bridge as an MCP program: ``kind = "jetstream_bridge"`` in a ``[[process]]`` table.

``export`` publishes the site's channels to a JetStream stream, ``import``
puts a stream's frames into the site's broker as mirrored sources, so several
turbines share data through a replicated NATS cluster (``docs/federation.rst``)::

    [[process]]
    name = "to_cluster"
    kind = "jetstream_bridge"
    args = ["export", "--turbine", "{turbine}", "--nats", "nats://n1:4222,nats://n2:4222", "daq_*"]

Importing this package imports neither nats-py nor trio-asyncio (``bridge.py`` does).
"""
