"""Every default, named and commented, in one place."""

#: This package's version (also in pyproject.toml).
VERSION = "0.1.0"

#: Highest wire-protocol version this package speaks (the broker announces it).
PROTOCOL_VERSION = 1
#: Protocol versions this package can speak, oldest first.
SUPPORTED_VERSIONS = (1,)

#: Where clients look for a broker unless told otherwise (CLI: --turbine / TURBINE_ADDRESS).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3333
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
ADDRESS_ENVVAR = "TURBINE_ADDRESS"
#: Where components keep what must survive a restart: <dir>/<type>_<name>/ (env TURBINE_STATE_DIR).
STATE_DIR = "var"
STATE_DIR_ENVVAR = "TURBINE_STATE_DIR"
#: A client's token (docs/protocol.rst, Authentication); never on a command line if it can be helped.
TOKEN_ENVVAR = "TURBINE_TOKEN"
#: A file holding a client's token (else ~/.config/turbine/token is read if it exists).
TOKEN_FILE_ENVVAR = "TURBINE_TOKEN_FILE"
#: A host's first failed login delays its next attempt this long; each failure doubles it ...
AUTH_FAILURE_DELAY_S = 0.1
#: ... up to this.
AUTH_FAILURE_DELAY_MAX_S = 10.0
#: Hosts whose failures the broker remembers (the least recent are forgotten first).
AUTH_FAILURE_HOSTS = 4096
#: A client speaks TLS and trusts this CA certificate (CLI: --tls-ca).
TLS_CA_ENVVAR = "TURBINE_TLS_CA"
#: A client's connection that waits for something (a subscription, a reply) and
#: from which nothing was heard this long is lost (pinged at half of it): a
#: link cut silently is noticed within a few seconds (turbine/_liveness.py).
LIVENESS_S = 4.0
#: The same, in seconds, for every client of a process (0: no check).
LIVENESS_ENVVAR = "TURBINE_LIVENESS"
#: The broker's TCP keepalive on a connection from another host: probed after
#: this many seconds of silence, then every second; given up after 3 unanswered
#: (6 s in all), so a client gone silently (a cut link) frees what it held
#: (its sources, reserved for its reconnect) before it comes back.
REMOTE_KEEPALIVE_IDLE_S = 3
REMOTE_KEEPALIVE_INTERVAL_S = 1
REMOTE_KEEPALIVE_PROBES = 3
#: A source held by a connection from another host that TCP has heard nothing
#: from this long (probed every second after 3 s: it answers if alive) is taken
#: over by a reconnecting client of the holder's name: its own lost connection,
#: whose end the broker has not seen yet (its resends wait out TCP's back-off).
HOLDER_GONE_SILENT_S = 5.0
#: A TLS broker waits this long for a connection's first byte before telling
#: a plain client (which waits for hello) to use TLS.
TLS_SNIFF_S = 1.0
#: status and turbine time flag a client clock further than this from the broker's.
CLOCK_FLAG_S = 0.050
#: Longest token a client_hello may carry (turbine auth token makes 43 characters).
MAX_AUTH_TOKEN_CHARS = 256
#: The client name every command line command connects with (it owns what they create).
CLI_CLIENT_NAME = "turbine"

#: Largest single frame payload the broker accepts (configurable with --max-frame).
MAX_FRAME_BYTES = 64 * 2**20
#: Largest msgpack header of one message; anything bigger is a protocol error.
MAX_HEADER_BYTES = 4 * 2**20
#: How much a message's payload may exceed the largest frame (a batch of small
#: frames).  Both directions: the broker accepts at most max_frame plus this,
#: and sends no more (a fetch reply comes in parts, see DELIVERY_BATCH_*).
PAYLOAD_SLACK_BYTES = 2**20
#: Largest payload section of one message (one frame at the size limit, or a batch).
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES + PAYLOAD_SLACK_BYTES
FETCH_MAX_FRAMES = 1_000_000

#: Broker-wide memory limit for ring buffers (turbine serve --max-memory).
MAX_MEMORY_BYTES = 2**30
#: Per-source ring defaults when a client does not say.
CACHE_FRAMES = 10_000
CACHE_BYTES = 16 * 2**20
#: A channel's rate (``list``, ``turbine ls``, the viewer, metrics) is frames per
#: second over the last RATE_WINDOW_S, from its newest RATE_FRAMES at most; with
#: fewer than that in hand, over RATE_MIN_SPAN_S at least (two log lines 35 us
#: apart are not 28,000 frames a second), and none for fewer than two frames.
RATE_WINDOW_S = 10.0
RATE_FRAMES = 100
RATE_MIN_SPAN_S = 1.0
#: Rings of a component's debug log source and of its command sink and source.
LOG_CACHE_FRAMES, LOG_CACHE_BYTES = 10_000, 4 * 2**20
COMMAND_CACHE_FRAMES, COMMAND_CACHE_BYTES = 1_000, 1 * 2**20
#: Disk archive kept per source that does not ask for its own (--archive-bytes).
ARCHIVE_BYTES = 1 * 2**30
#: And of a component's debug log source and command sink and source (not the broker's --archive-bytes:
#: a site's many components must not reserve a --max-disk budget for their logs).
LOG_ARCHIVE_BYTES, COMMAND_ARCHIVE_BYTES = 64 * 2**20, 8 * 2**20
#: Share of --max-memory a client (by name) may reserve and still have other
#: clients' offline sources evicted to make room; beyond it only free memory and its
#: own offline sources serve it.
EVICTION_SHARE = 0.25
#: Bookkeeping cost charged per stored frame on top of its payload.
FRAME_OVERHEAD_BYTES = 64
#: A ring keeps each put's payload whole until its last frame is evicted
#: (turbine/payloads.py); what the evicted frames held of it is not counted.  Once
#: that is more than this and more than half of the buffer, the frames left are
#: copied out and the buffer freed: a channel holds at most this much, or as much
#: as it counts, beyond its count.  A client's put (PUT_BATCH_BYTES) never reaches it.
RING_SLACK_BYTES = 256 * 2**10

# --- limits on what one message may carry (docs/protocol.rst, "Limits", lists them all) ---

#: Longest wildcard pattern (subscribe, fetch, list), in characters.
MAX_PATTERN_CHARS = 1024
#: Longest source or channel name, in characters.
MAX_NAME_CHARS = 255
#: Longest name a client gives itself in client_hello.  The broker's name for the
#: connection adds "#N (HOST:PORT)": frames' writer fields stay within MAX_WRITER_CHARS.
MAX_CLIENT_NAME_CHARS = 128
MAX_WRITER_CHARS = MAX_CLIENT_NAME_CHARS + 64
#: Longest content type (RFC 6838: 127 for the type, 127 for the subtype, and '/').
MAX_CONTENT_TYPE_CHARS = 255
#: Longest message type, error code or ``start`` word.
MAX_TOKEN_CHARS = 64
#: Longest ``software`` string of the broker's hello.
MAX_SOFTWARE_CHARS = 255
#: Longest error message (the broker cuts longer ones, marking the cut).
MAX_ERROR_MESSAGE_CHARS = 4096
#: Most channels one source may have (open_source's map and channels made by put).
MAX_CHANNELS_PER_SOURCE = 1024
#: Producers whose newest put number a source remembers (de-duplication); the one
#: that put least recently is forgotten first.
MAX_PRODUCERS_PER_SOURCE = 256
#: A source whose holder lost its connection (or that came back from disk at a
#: restart) stays reserved for that client this long: it reconnects with backoff
#: capped at 0.5 s, and another client taking the source over meanwhile would make
#: its replayed puts fail.
RECLAIM_GRACE_S = 10.0
#: How many spans of frames their producers dropped a channel remembers (for its gaps).
DROP_SPANS_PER_CHANNEL = 16
#: What a reconnecting client keeps of unacknowledged puts (frame bytes), by default.
SPOOL_BYTES = 64 * 2**20
#: A component's spool limit (frame bytes) instead of SPOOL_BYTES, from the environment.
SPOOL_BYTES_ENVVAR = "TURBINE_SPOOL_BYTES"
#: ... of which it keeps this much in memory when it has a spool directory (the
#: rest goes to a file there: a component's state dir).
SPOOL_MEMORY_BYTES = 8 * 2**20
#: What the receive buffers of all connections may hold together beyond one
#: normal read each (partial large messages); a reader waits when it is used up.
MAX_RECEIVE_MEMORY_BYTES = 4 * MAX_PAYLOAD_BYTES
#: Allocations at least this large get their own memory mapping, returned to the
#: system whole when freed (turbine serve pins glibc's threshold: turbine/_memory.py).
#: Smaller ones, large frames' receive buffers among them, come from the heap,
#: where a freed buffer is reused by the next.  Under the old 128 KiB pin a
#: large frame got a fresh mapping whenever the heap's top had no room: two
#: page faults per 4 KiB (the zero-fill read, then the copy) and an munmap at
#: eviction, 42 % of the broker's CPU time at 1 MB frames (perf, 490 faults per
#: MB).  The trimmer returns free heap pages after closes and source deletes.
#: Larger buffers (frames over 2 MiB, a hostile client's huge message) keep
#: their own mapping: growing one on the heap copies it at every doubling
#: (realloc cannot remap there), which held the event loop: with a 32 MiB
#: threshold the hostile-client test's status latency went from 52-69 ms to
#: 109-191 ms.
MMAP_THRESHOLD_BYTES = 2 * 2**20
#: After connections close, free memory goes back to the system at most this often.
TRIM_INTERVAL_S = 1.0
#: A deleted source's ring is freed and its pages returned this much at a time,
#: one slice a step of the broker's loop: a slice of 8 MiB took 0.6-1.3 ms of
#: CPU here (freeing, unmapping, the trim), 16 MiB 1.2-1.8 ms.
REAP_SLICE_BYTES = 8 * 2**20
#: ... and at most this many payloads a slice (a ring holding a payload per small
#: frame: each free is ~30-100 ns).
REAP_SLICE_OBJECTS = 10_000
#: A trim collects every generation of the cycle collector (what a long-lived
#: connection left is there) once the connections closed since the last such
#: collection reach this share of those still open, and after a source is
#: deleted; else only the young generations.  A full collection walks every
#: connection's objects (about 55 us per connection held: 0.17 s with 3,000),
#: so at every close it cost O(connections); now each close pays a constant
#: share, and the garbage waiting is at most this share of the live connections'.
FULL_COLLECT_SHARE = 0.25
#: ... and at least this many closes: a full collection also walks every ring's
#: list of frames (50-77 ms with a ring of 5,000,000 small frames, the loop held
#: all that time), so a few closes among few connections (a `turbine cmd`, a
#: sink restarting) must not pay it each time.
FULL_COLLECT_MIN_CLOSES = 64
#: A message that stays partly received this long closes its connection (seconds);
#: so does a connection that sends no client_hello within it.
MESSAGE_TIMEOUT_S = 30.0
#: Largest metadata frame (the metadata channel's JSON) and its deepest nesting.
MAX_METADATA_BYTES = 64 * 2**10
MAX_METADATA_DEPTH = 32

#: Source types and details of the <type>_<name>_<detail> convention.
SOURCE_TYPES = ("video", "thumbnail", "daq", "ntcp", "audio")
SOURCE_DETAILS = ("data_source", "debug_log_source", "command_source", "command_sink")

#: The channel every source carries its metadata on (UTF-8 JSON frames).
METADATA_CHANNEL = "metadata.txt"

#: Client put batching: a batch is written once it holds this many bytes or
#: frames; the put that fills it waits for the socket (backpressure).
PUT_BATCH_BYTES = 256 * 2**10
PUT_BATCH_FRAMES = 4096

#: Broker delivery and fetch replies: one frames message holds at most this many
#: bytes (or one larger frame) or frames.
DELIVERY_BATCH_BYTES = 1 * 2**20
DELIVERY_BATCH_FRAMES = 8192
#: A fetch answered from a disk is read and sent in parts of about this much payload,
#: each read while the one before is written: a connection holds a few parts in memory,
#: however large the reply (measured: 8 MiB keeps the reads' thread hops and the
#: writer's rounds well under 1 % of a replay's time).
FETCH_PART_BYTES = 8 * 2**20
#: Payloads at least this large are received into buffers of their own and kept as views.
VECTORED_MIN_BYTES = 32 * 2**10
#: Outbound buffers smaller than this are joined with their small neighbours before a
#: vectored send; larger ones go as buffers of their own, uncopied.  Joining 1,000
#: frames of 1 KB into a fresh MiB took 0.4 ms of the broker's 1.0-1.5 ms per fetch
#: reply (first touch of fresh pages); an iovec each costs the kernel far less.
JOIN_BELOW_BYTES = 512
#: Received frames at least this large on average are copied out of their message's
#: buffer one by one; smaller ones by copying the whole payload once, then slicing
#: (cheaper per frame: 54 against 80 ns for 64 B frames).  A fresh process pays for
#: every page it touches first (about 2 us a page here), and that whole-payload copy
#: doubles the memory touched: a history fetch of 1,000 frames of 1 KB spent 1.5-1.7
#: ms of CPU making its frames, 1.1-1.3 ms without it (cold processes, load 10).
COPY_FRAMES_ONE_BY_ONE_BYTES = 1024
#: Outbound replies queued for one connection before its reader stops reading.
OUTBOUND_QUEUE_BYTES = 16 * 2**20
#: A write to a client that blocks this long closes that client (it is not reading).
WRITE_TIMEOUT_S = 30.0
#: A write to a client that blocks this long counts as a slow event (status shows them).
SLOW_WRITE_S = 1.0
#: After a protocol error: how long the broker tries to send its last words
#: (replies queued before them first), then how long it reads and drops what
#: the client still sends, so that closing does not reset the connection and
#: destroy those words in the client's receive buffer.
LAST_WORDS_S = 1.0
CLOSE_DRAIN_S = 1.0
#: Out of file descriptors with none in reserve to refuse a client with: how
#: long the broker waits before it accepts again (as trio's own loop does).
ACCEPT_RETRY_S = 0.1
#: Out of file descriptors: the broker logs it once, then again only after this long.
FULL_LOG_INTERVAL_S = 60.0
#: How long one connection's reader may handle a burst of requests before it
#: lets every other task run (seconds of CPU, not a deadline).
TURN_S = 0.002
#: Bytes asked of the socket per read: a connection's first reads ask for
#: FIRST_RECEIVE_BYTES, doubling up to RECEIVE_BYTES while reads fill what is asked
#: (an idle connection holds a small buffer).
RECEIVE_BYTES = 256 * 2**10
FIRST_RECEIVE_BYTES = 16 * 2**10

#: Client side: frame batches buffered per subscription before the reader waits.
SUBSCRIPTION_QUEUE_BATCHES = 64

#: How many closed connections the broker remembers (with reasons) for status.
CLOSED_HISTORY = 32

#: Content type of numeric sample blocks: little-endian float64 arrays (taps print numbers).
FLOAT64_CONTENT_TYPE = "application/x-float64-le"

# --- master control program -------------------------------------------------------

#: How often the MCP publishes its programs' state and redraws its table (seconds).
STATUS_INTERVAL_S = 1.0
#: The MCP restarts a broker that exited after this, doubling per crash in a row up
#: to the most: every client waits for it, and the issue's figure is "within 2 s".
BROKER_RESTART_FIRST_S = 0.1
BROKER_RESTART_MAX_S = 1.0
#: How long the MCP lets its broker stop (SIGTERM to SIGKILL): with a data dir it
#: writes and syncs every source on the way down (3 s for 53 sources and 1.6 GB
#: when idle; more than the programs' 5 s under load), and a kill costs a crash
#: recovery at the next start (18 s there).  A second Ctrl-C still kills at once.
BROKER_STOP_GRACE_S = 60.0
#: How long a `start` command waits for the process to be running.
START_WAIT_S = 10.0
#: After a child exits, how long its output may take to drain.
DRAIN_S = 1.0
#: Lines of program output kept under the live table.
TAIL_LINES = 14
#: Longest line of program output passed on (the rest is cut).
MAX_LINE = 2000

# --- mirrors ----------------------------------------------------------------------

#: How often a mirror lists its origin for new sources and channels (seconds): the most a
#: new source's first frames wait before they are copied (they stay in the origin's ring).
MIRROR_POLL_S = 1.0
#: After a mirror lost either broker, how long it waits before it connects again (seconds).
MIRROR_RETRY_S = 1.0
#: Deliveries of A a mirror holds per channel for a copy that waits on B (each at most
#: DELIVERY_BATCH_BYTES): a catch-up behind a slow B held up to 64 MiB a channel with
#: the client's SUBSCRIPTION_QUEUE_BATCHES.  A copy reads its own deliveries when its
#: queue is empty, so the queue only fills while another channel's copy reads for it.
MIRROR_QUEUE_BATCHES = 4
#: Reports a mirror inside a broker keeps until its program asks for them
#: (turbine/_mirror_inside.py); older ones are dropped.
MIRROR_INSIDE_REPORTS = 100

#: Samples a numeric channel's block summary covers at least (turbine/summary.py): a
#: summary is 72 bytes (in memory and in its archive file), so at 1000 it costs 0.9 % of
#: the samples it covers, and a day of a 1 kHz channel is 86,400 of them (6.2 MB)
#: instead of 691 MB of samples.
SUMMARY_BLOCK_SAMPLES = 1000
#: Columns a summarize request may ask for at most (its answer is one header, capped at
#: MAX_HEADER_BYTES: 20,000 columns of 7 numbers stay well under it).
SUMMARY_MAX_COLUMNS = 20_000
