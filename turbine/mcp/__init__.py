"""The master control program: ``turbine mcp SITE.toml`` runs a site.

The MCP starts the broker (or uses one), launches each configured program as
its own OS process, restarts what exits unexpectedly with exponential
backoff, marks what keeps crashing as failed, and on Ctrl-C or SIGTERM stops
every program (SIGTERM, then SIGKILL after a grace period), components
first, then processes, and then the broker (with a grace of its own, long
enough to sync its archive).  Children get ``PR_SET_PDEATHSIG = SIGKILL``, so none outlives an MCP
that is itself killed with SIGKILL; each child leads its own process group,
which the MCP signals as a whole, so a child's own helpers stop with it.

The MCP is a component too (type ``mcp``): commands ``status``,
``start NAME``, ``stop NAME``, ``restart NAME``; its data source publishes
every program's state on ``mcp_<name>_data_source/state.json`` (state, pid,
restarts, uptime, last exit code) whenever it changes and every second.

The site file
-------------

::

    [mcp]
    name = "demo"             # the MCP's own endpoints: mcp_demo_*
    grace = 5.0               # seconds between SIGTERM and SIGKILL when stopping a program
    restart_first = 0.5       # first restart delay; doubles with each crash in a row ...
    restart_max = 30.0        # ... up to this
    max_restarts = 5          # crashes in a row before a program is marked failed
    stable_after = 30.0       # a run at least this long resets the crash count

    [broker]
    embedded = true           # the MCP runs the broker as its child (false: use `address`)
    host = "127.0.0.1"
    port = 3333               # 0 picks a free port; the MCP prints "turbine listening on HOST:PORT"
    types = ["mcp", "dvd"]    # source types besides video, thumbnail, daq, ntcp, audio (mcp: always)
    data_dir = "var/turbine"  # archive every frame there (relative: to the working directory);
                              # sources and numbers survive a restart. Without it: memory only
    archive_bytes = 1073741824  # with data_dir: disk kept per source that does not ask (bytes)
    max_disk = 0              # with data_dir: budget of all sources' archives (0: none)
    restart_first = 0.1       # the broker's first restart delay; doubles with each crash ...
    restart_max = 1.0         # ... up to this (every client waits for it: keep both short)
    grace = 60.0              # its SIGTERM to SIGKILL: it writes and syncs its archive on the way down
    keepalive_idle = 3        # turbine serve --keepalive-idle, -interval, -probes, --holder-silence:
    keepalive_interval = 1    # how it finds a client on another host gone (docs/protocol.rst,
    keepalive_probes = 3      # Transport); holder_silence more than idle + interval
    holder_silence = 5.0
    # address = "127.0.0.1:3333"   # with embedded = false

    [auth]                    # tokens on (an embedded broker only); without this table: none
    dir = "var/auth"          # auth.toml (hashes and rights) and tokens/USER, made at the first start
    operator = "operator"     # an admin whose token is left where the turbine commands find it

    [[component]]             # a turbine component, one per table
    kind = "daq"              # a registered kind (turbine.kinds): here components.daq
    name = "demo"             # its endpoints: daq_demo_* (the prefix is the class's type)
    args = []                 # extra command-line arguments, e.g. ["--log-level", "DEBUG"]
    restart = true            # restart when it exits unexpectedly
    enabled = true            # start with the site (false: only on `start NAME`)
    clock = "local"           # "broker": stamp frames on the broker's clock (no NTP here)
    grace = 5.0               # its own SIGTERM to SIGKILL (default: [mcp] grace); [[process]] too
    user = "daq_demo"         # with [auth]: its user (default: its <type>_<name>), with the rights
    rights = { read = [], write = [], command = [] }  # its kind needs plus these source patterns
    [component.settings]      # checked against the class's `settings` before anything starts
    rate = 100.0
    # file = "recordings/a.csv"   # a path setting: relative to this file's directory

    [[process]]               # a plain program (a simulator, a device server): no endpoints
    name = "camera"           # its name in the MCP's state and commands
    kind = "camera_sim"       # runs `python -m components.camera_sim ARGS` ...
    args = ["--port", "8081"]
    # command = ["ffmpeg", "..."]   # ... or any program (instead of kind)
    # user = "web"            # with [auth]: its user, with exactly these rights
    # rights = { read = ["*"] }   # (and write, command); without a user it gets no token

With ``[auth]`` every component logs in as its own user, by default with
the rights its class's :meth:`~turbine.component.Component.rights` gives it
(its own four endpoints, plus what its settings say it reads or commands);
each program finds the path of its own token in ``TURBINE_TOKEN_FILE``
(never the token on its command line or in its environment).  The operator
may read and write everything and command every component whose class
allows it: an NTCP translator's command sink takes commands from its serdes
plugin only.  See :mod:`turbine.mcp.users`.

The embedded broker is a program too, called ``broker`` (``turbine serve``
with the ``[broker]`` settings, as a child process): it starts first, and the
others once it listens; killed, it is started again on the same port and data
dir after ``[broker] restart_first`` (0.1 s; doubling per crash in a row, at
most ``restart_max``, 1 s: the ``[mcp]`` delays are the other programs'), and the components
ride through the outage (they reconnect, replay what they spooled and resume
their subscriptions).  Its row in ``status`` adds ``address``, ``data_dir`` and
``disk_bytes``.  A broker that exits before it listens (port taken, data dir
locked) stops the site: the MCP exits with status 1 and the broker's reason;
so does one that crashes more than ``max_restarts`` times in a row.

In ``args`` and ``command``, ``{turbine}`` becomes the broker's address.
Processes start before components.  Config errors (unknown kind, bad name,
unknown or missing key, wrong type) are reported with the file, the key and
what is expected, before anything starts; ``[[component]]`` tables are
counted from 1 in messages: ``site.toml: component[2].settings.rate:
expected float, got 'fast'``.

Writing a component the MCP can launch
--------------------------------------

``kind = "<kind>"`` names an entry point of the ``turbine.components`` group
(see :mod:`turbine.kinds`; ``turbine components`` lists them), whose value is
a package; unregistered, ``components.<kind>``.  Below, that package is
``components.<kind>``:

1. ``components/<kind>/`` is a package whose ``__init__.py`` has no side effects;
2. ``components/<kind>/component.py`` defines the :class:`~turbine.component.Component`
   subclass and names it ``COMPONENT = TheClass`` (without ``COMPONENT``, the
   one Component subclass defined in that module is used);
3. ``components/<kind>/__main__.py`` calls ``TheClass.main()``, so that
   ``python -m components.<kind> --name NAME --turbine HOST:PORT --set KEY=VALUE ...``
   runs it (the MCP passes the settings on an inherited pipe, ``--settings-fd``,
   never on the command line);
4. the class's ``type`` (``daq``, ``video``, ``dvd`` ...) must be one of the
   broker's types (``[broker] types`` adds to the standard ones).

A ``[[process]]`` with a ``kind`` only needs ``components/<kind>/__main__.py``;
it gets ``args`` as its command line and ``TURBINE_ADDRESS`` in its environment.
"""

from .config import (
    McpSettings,
    ProgramSpec,
    SiteConfig,
    SiteConfigError,
    UnknownProgram,
    available_kinds,
    component_class,
    load_config,
)
from .console import Console
from .site import Mcp, mcp, run_site
from .supervisor import Supervisor

__all__ = [
    "Console",
    "Mcp",
    "McpSettings",
    "ProgramSpec",
    "SiteConfig",
    "SiteConfigError",
    "Supervisor",
    "UnknownProgram",
    "available_kinds",
    "component_class",
    "load_config",
    "mcp",
    "run_site",
]
