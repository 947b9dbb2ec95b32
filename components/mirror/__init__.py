"""A mirror as an MCP program: ``kind = "mirror"`` in a ``[[process]]`` table.

It runs ``turbine mirror`` with the table's ``args``.  Beside the origin it
pushes (``args = ["--from", "{turbine}", "--to", "central:3333", "daq_*"]``),
beside the target it pulls (``["--from", "lab1:3333", "--to", "{turbine}",
"daq_*"]``); the copy is the same (``docs/federation.rst``).  With
``"--inside", "from"`` in a pushing mirror's args (``"--inside", "to"`` in a
pulling one's) the site's broker copies in its own process.
"""
