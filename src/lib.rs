//! scorecast: a live relay daemon for esports and sports broadcasts.
//!
//! Map of the modules:
//! - [`config`]: the TOML config file and its validation (the settings the operator asked for).
//! - [`relay`]: one actor per relay owning its GStreamer pipelines (`relay::actor`), the
//!   handle the rest of the daemon talks to it through (`relay::handle`), and the pure rules
//!   the actor follows: the program's lifecycle, each destination's state and backoff, the
//!   scorebug's render schedule, and the live events diffed from its state. Beside them, the
//!   relay spec (the JSON shape shared by the config file and the API), the registry that
//!   maps ids and stream keys to actors and decides when the API's relays are saved, and the
//!   state file (`relay::store`) they are saved to and restored from.
//! - [`pipeline`]: builds the media graphs (the program: inputs, the slate switch, encoders,
//!   HLS and FLV branches; and one pipeline per RTMP destination), the pure ladder rules
//!   (renditions, destination encodes, the master playlist), and the bus messages classified
//!   into what the relay reacts to. Only relay actors call it.
//! - [`ingest`]: the RTMP server that publishers push to, with its connection and refusal
//!   caps; one connection's protocol without sockets, the gate in front of `rml_rtmp`, and
//!   the fuzz driver. It hands accepted streams to relays.
//! - [`api`]: the HTTP API (warp): the route table, handlers, wire types, error mapping, the
//!   token check and the browser rules (Host, Origin, Content-Type), HLS serving, and the
//!   operator console's page (`console/`, built in).
//! - [`compat`]: the drop-in for the Flask overlay relay (`[compat]`): the relay a
//!   `/start_stream` makes for a stream name (pulled, with an overlay), and back.
//! - [`scores`]: the scoreboard model, JSON-Pointer mapping, the manual-vs-API rule, the
//!   scores API poller, the logo limits and cache, and the guard that keeps fetches off
//!   private addresses.
//! - [`render`]: pure scorebug rendering (scoreboard → RGBA image), shared by the pipeline and
//!   `scorecast render-overlay`.
//! - [`events`]: the live event feed (ids, history for `Last-Event-ID`, fan-out).
//! - [`secrets`]: the masked forms of stream keys, destination keys and scores-API
//!   credentials, for read-only callers and log lines, and the public id of compatible relays.
//! - [`notify`]: systemd's notify protocol (readiness, status line, watchdog pings).
//! - [`telemetry`]: `tracing` set-up and the bridge that routes GStreamer's log into it.
//! - [`daemon`]: wires everything together; `run(listeners, shutdown)` is what `main` and the
//!   tests call.

pub mod api;
pub mod compat;
pub mod config;
pub mod daemon;
pub mod events;
pub mod ingest;
pub mod notify;
pub mod pipeline;
pub mod relay;
pub mod render;
pub mod scores;
pub mod secrets;
pub mod telemetry;
