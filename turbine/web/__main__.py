"""``python -m turbine.web [--turbine ADDR] [--host H] [--port P]``: ``turbine web``, as an MCP ``[[process]]`` kind runs it."""

from turbine.cli.serve import web

web(prog_name="python -m turbine.web")
