//! Everything the RTMP ingest server parses, from arbitrary bytes: the handshake, chunks,
//! AMF commands and FLV tags, through the same sans-IO core the server runs
//! (`scorecast::ingest::harness::drive`; its doc says how the first byte picks the mode).
//!
//! Panics inside `rml_rtmp` that our guard catches end only their connection, so they are
//! let through here unless `SCORECAST_FUZZ_STRICT` is set (to collect them as reproducers);
//! any other panic, a hang or a runaway allocation is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use scorecast::ingest::{harness, protocol};

fn tolerate_guarded_panics() {
    if std::env::var_os("SCORECAST_FUZZ_STRICT").is_some() {
        return;
    }
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !protocol::inside_guarded_call() {
            abort(info);
        }
    }));
}

fuzz_target!(|data: &[u8]| {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(tolerate_guarded_panics);
    harness::drive(data);
});
