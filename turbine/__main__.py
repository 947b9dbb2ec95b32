"""``python -m turbine``: the ``turbine`` command (how the MCP starts its broker child)."""

from .cli import main

main(prog_name="turbine")
