//! The actor's program: building it (with its HLS directory, master playlist and the
//! destinations' feeds), draining it on stop, tearing it down, and what its bus reports.
//!
//! Owns the [`RunningProgram`] and the calls into `pipeline::program` that make and end
//! one. It must not decide when to rebuild: [`Lifecycle`](super::Lifecycle) does, from
//! the events this part reports to it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gst::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{abandon, forward_bus, Actor, Event};
use crate::pipeline::bus::{ProgramEvent, Segment};
use crate::pipeline::input::{Arrival, Source};
use crate::pipeline::ladder::{self, Encode, Rendition, Variant};
use crate::pipeline::program::{self, Input};
use crate::pipeline::{self as pl, continuity, dvr, PipelineError};
use crate::relay::handle::RelayError;
use crate::relay::lifecycle::{LifeEvent, Lifecycle};
use crate::relay::recordings;
use crate::relay::spec::{self, OutputSpec, SegmentFormat};
use crate::relay::state::OutputEvent;
use crate::render::SlateMessage;

/// How long a stopping program may take to drain (final playlist) before it is torn down.
pub(super) const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A running program pipeline.
pub(super) struct RunningProgram {
    pub(super) program: program::Program,
    pub(super) generation: u64,
    bus_task: JoinHandle<()>,
    /// The master playlist to write once every variant it lists has its first segment (a
    /// player opening it must find each media playlist); `None` once written. A passthrough
    /// relay's is known only from the publisher's first segment.
    master: Option<Vec<Variant>>,
    master_written: bool,
    /// The numbering it was started with, for its DVR playlists.
    continuity: continuity::Continuity,
    /// The DVR window in force, if the relay has a DVR.
    dvr: Option<std::time::Duration>,
    /// Whether the encoder's first dropped frame has been warned about (once a program).
    overload_warned: bool,
    dvr_failing: bool,
}

impl Actor {
    /// Builds the program a relay runs before any publisher comes: a decoded relay's (on
    /// the slate, with a pulled stream attached at once), or a pulling passthrough relay's.
    /// A pushed passthrough relay waits for its publisher instead.
    pub(super) fn run_program(&mut self) {
        let pull = self.spec.ingest.url.clone().map(Source::Pull);
        let result = if self.spec.transcode {
            self.start_program(None).map(|_| self.attach_pull())
        } else if let Some(source) = pull {
            self.start_program(Some(source)).map(|_| ())
        } else {
            return;
        };
        if let Err(e) = result {
            self.fail_program(e.to_string());
        }
    }

    /// The renditions this relay encodes, tallest first, checked against the program format.
    pub(super) fn renditions(&self) -> Result<Vec<Rendition>, RelayError> {
        ladder::renditions(&self.spec, &self.ctx.program).map_err(
            |spec::SpecError { field, message }| RelayError::Invalid {
                id: self.spec.id.clone(),
                field,
                message,
            },
        )
    }

    /// The encode destination `spec` needs, or `None` when the top rendition's serves: the
    /// same size and bitrate, and the preset's GOP. A height of its own without a bitrate
    /// takes the rendition preset's bitrate for that height, or else the top rendition's
    /// scaled by the pixel count; the preset's ceiling applies either way.
    pub(super) fn output_encode(&self, spec: &OutputSpec, top: &Rendition) -> Option<Encode> {
        ladder::destination_encode(&self.spec, spec, top, &self.ctx.program)
    }

    /// Builds and plays the program and every destination's pipeline: a decoded one on the
    /// slate (`remux` is `None`), or one remuxing `remux`. Returns the ingest appsrc (remuxed
    /// push relays) and the mark the RTMP server sets when the first frame arrives.
    pub(super) fn start_program(
        &mut self,
        remux: Option<Source>,
    ) -> Result<(Option<gst_app::AppSrc>, Arc<Arrival>), RelayError> {
        let epoch = gst::SystemClock::obtain().time();
        let renditions = self.renditions()?;
        let pipeline_error = |source| RelayError::Pipeline {
            id: self.spec.id.clone(),
            source,
        };
        self.generation += 1;
        let generation = self.generation;
        let hls_dir = self.ctx.hls_root.join(&self.spec.id);
        // Old segments belong to an earlier program; players must not mix them in. Their
        // count carries over, so the media sequence keeps rising past them. A DVR keeps those
        // its window still needs.
        let previous = continuity::load(&hls_dir).unwrap_or_default();
        let continuity = continuity::next(&hls_dir);
        let dvr = self.dvr_window();
        match dvr {
            Some(window) => {
                let names: Vec<&str> = renditions
                    .iter()
                    .map(|r| r.name.as_str())
                    .chain(
                        (self.spec.hls.format == SegmentFormat::Fmp4)
                            .then_some(ladder::AUDIO_RENDITION),
                    )
                    .collect();
                dvr::prepare(&hls_dir, &previous, &names, window);
            }
            None => {
                let _ = std::fs::remove_dir_all(&hls_dir);
            }
        }
        // The new HLS directory gets the scoreboard on screen as its first score change.
        self.hls_marked = None;
        std::fs::create_dir_all(&hls_dir)
            .map_err(|source| PipelineError::Io {
                path: hls_dir.display().to_string(),
                source,
            })
            .and_then(|_| continuity::save(&hls_dir, &continuity))
            .map_err(pipeline_error)?;
        let input = match remux {
            Some(source) => Input::Remux(source),
            None => Input::Switched(
                self.ctx
                    .slates
                    .get(SlateMessage::StartingSoon, &self.ctx.program)
                    .as_ref()
                    .clone(),
            ),
        };
        let params = program::ProgramParams {
            relay_id: self.spec.id.clone(),
            input,
            program: self.ctx.program.clone(),
            hls: self.ctx.hls.clone(),
            renditions: renditions.clone(),
            hls_dir: hls_dir.clone(),
            sequence_base: continuity.sequence_base,
            hls_format: self.spec.hls.format,
            keep_segments: dvr.is_some(),
            overlay: self.scorebug.slot(),
            thumbnail: self.spec.transcode.then(|| self.thumbnail.clone()),
            record: self.record_params(),
            epoch,
            arrival: Arc::default(),
        };
        let mut built = program::build(&params).map_err(pipeline_error)?;
        for (id, out) in self.outputs.iter() {
            let encode = self.output_encode(&out.spec, &renditions[0]);
            built.add_destination(id, encode).map_err(pipeline_error)?;
        }
        let master = self.spec.transcode.then(|| {
            renditions
                .iter()
                .map(|r| Variant::for_rendition(r, &self.ctx.program))
                .collect::<Vec<Variant>>()
        });
        let bus_task = forward_bus(&built.pipeline, self.events_tx.clone(), move |event| {
            Event::ProgramBus { generation, event }
        });
        if let Err(e) = pl::set_state(&built.pipeline, gst::State::Playing) {
            bus_task.abort();
            abandon(built.pipeline.clone(), format!("relay {}", self.spec.id));
            return Err(pipeline_error(e));
        }
        let names: Vec<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
        info!(relay = %self.spec.id, generation, renditions = ?names, transcode = self.spec.transcode, "program playing");
        let ingest = built.ingest.clone();
        self.on_air = None;
        self.program = Some(RunningProgram {
            program: built,
            generation,
            bus_task,
            master,
            master_written: false,
            continuity,
            dvr,
            dvr_failing: false,
            overload_warned: false,
        });
        self.life_event(LifeEvent::Built { generation });
        for id in self.outputs.ids() {
            self.start_output(&id);
        }
        Ok((ingest, params.arrival))
    }

    /// Ends the program: EOS so the final playlist is written, bounded in time, then teardown.
    pub(super) async fn stop_program(&mut self, why: &str) {
        let Some(generation) = self.program.as_ref().map(|p| p.generation) else {
            return;
        };
        info!(relay = %self.spec.id, reason = why, "stopping program");
        for id in self.outputs.ids() {
            self.stop_output(&id, OutputEvent::Stopped, why);
        }
        if let Some(program) = &self.program {
            program.program.end();
        }
        // Keep handling events while the program drains, until its EOS (or error) arrives.
        let deadline = Instant::now() + DEFAULT_DRAIN_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(Event::ProgramBus {
                    generation: g,
                    event: ProgramEvent::Eos | ProgramEvent::Error { .. },
                })) if g == generation => break,
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => break,
                Err(_) => {
                    warn!(relay = %self.spec.id, generation, "program did not drain in time");
                    break;
                }
            }
            if self.program.as_ref().map(|p| p.generation) != Some(generation) {
                return;
            }
        }
        self.teardown_program();
    }

    /// Drops the program at once (no drain); its destinations stop with it.
    pub(super) fn teardown_program(&mut self) {
        for id in self.outputs.ids() {
            if self.pushes.contains_key(&id) || self.outputs.is_active(&id) {
                self.stop_output(&id, OutputEvent::Stopped, "program stopped");
            }
        }
        // Its branch goes with the pipeline; the publisher's feed fails and it is dropped.
        self.input = None;
        self.recording.clear();
        self.queue_program_gone();
        self.input_retry = None;
        self.on_air = None;
        if let Some(program) = self.program.take() {
            program.bus_task.abort();
            abandon(program.program.pipeline, format!("relay {}", self.spec.id));
            self.life_event(LifeEvent::Ended {
                generation: program.generation,
            });
        }
        if let Some(p) = self.publisher.take() {
            info!(relay = %self.spec.id, peer = %p.peer, "publisher disconnected");
        }
    }

    /// The program failed: tear it down and, unless it waits for a publisher (pushed
    /// passthrough), schedule a rebuild.
    pub(super) fn fail_program(&mut self, reason: String) {
        self.last_error = Some(reason.clone());
        let rebuilds = self.spec.transcode || self.spec.ingest.url.is_some();
        let wanted = self.life.wanted();
        self.life_event(LifeEvent::Failed {
            reason: reason.clone(),
            rebuilds,
        });
        self.teardown_program();
        match &self.life {
            Lifecycle::Retrying(retry) => {
                let delay = retry.next_at.saturating_duration_since(Instant::now());
                warn!(relay = %self.spec.id, attempt = retry.attempt, delay = ?delay, reason = %retry.reason, "program failed, retrying");
            }
            _ if wanted => {
                warn!(relay = %self.spec.id, reason = %reason, "program failed; waiting for the publisher to return");
            }
            _ => {}
        }
    }

    /// What the program's bus reported (events from an older program are ignored).
    pub(super) fn on_program_event(&mut self, generation: u64, event: ProgramEvent) {
        if self.program.as_ref().map(|p| p.generation) != Some(generation) {
            return;
        }
        match event {
            ProgramEvent::Error {
                error: err,
                ingest_branch: branch,
            } => {
                let current = self.input.as_ref().map(|a| a.branch.name());
                if branch.is_some() && branch == current {
                    self.on_input_error(err);
                } else if branch.is_some() {
                    debug!(relay = %self.spec.id, error = %err, "error from a detached input, ignored");
                } else {
                    error!(relay = %self.spec.id, element = %err.element, debug = ?err.debug, "{}", err.message);
                    self.fail_program(err.to_string());
                }
            }
            ProgramEvent::Ping => {
                for reply in self.pings.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            ProgramEvent::Latency => {
                if let Some(running) = &self.program {
                    let _ = running.program.pipeline.recalculate_latency();
                }
            }
            ProgramEvent::RecordingFailed { number, error } => {
                let Some(running) = &mut self.program else {
                    return;
                };
                if running.program.drop_recording(number) {
                    warn!(relay = %self.spec.id, element = %error.element, error = %error.message, retry_in = ?RECORD_RETRY, "the recording failed; the program goes on without it");
                    self.record_retry_at = Some(Instant::now() + RECORD_RETRY);
                } else {
                    debug!(relay = %self.spec.id, error = %error, "error from an ended recording, ignored");
                }
            }
            ProgramEvent::InputSwitched { slate } => self.on_switched(slate),
            ProgramEvent::IngestEnded { branch } => self.on_ingest_ended(branch),
            ProgramEvent::SegmentAdded(segment) => self.on_segment_added(&segment),
            ProgramEvent::Eos => {
                info!(relay = %self.spec.id, "program reached end of stream");
                if self.spec.ingest.url.is_some() {
                    self.fail_program("the pulled stream ended".to_owned());
                } else {
                    self.teardown_program();
                }
            }
        }
    }

    /// Writes the master playlist once every variant has its media playlist. A passthrough
    /// relay learns its stream's size and bitrate from its first segment.
    fn on_segment_added(&mut self, segment: &Segment) {
        let Some(running) = &mut self.program else {
            return;
        };
        if let (Some(window), Some(dir)) = (running.dvr, segment.location.parent()) {
            // Said once when it starts failing and once when it works again.
            match dvr::update(dir, &running.continuity, window) {
                Err(e) if !running.dvr_failing => {
                    warn!(relay = %self.spec.id, error = %e, "cannot update the DVR playlist");
                    running.dvr_failing = true;
                }
                Ok(()) if running.dvr_failing => {
                    info!(relay = %self.spec.id, "DVR playlist updated again");
                    running.dvr_failing = false;
                }
                _ => {}
            }
        }
        if running.master_written {
            return;
        }
        if running.master.is_none() {
            match program::source_variant(&running.program.pipeline, segment) {
                Some(variant) => running.master = Some(vec![variant]),
                None => {
                    debug!(relay = %self.spec.id, "publisher's stream not described yet");
                    return;
                }
            }
        }
        self.write_master_when_ready();
    }

    /// Writes the pending master playlist if every media playlist it lists is on disk.
    fn write_master_when_ready(&mut self) {
        let hls_dir = self.ctx.hls_root.join(&self.spec.id);
        let Some(running) = &mut self.program else {
            return;
        };
        let Some(variants) = running.master.as_ref().filter(|_| !running.master_written) else {
            return;
        };
        let format = self.spec.hls.format;
        let audio = (format == SegmentFormat::Fmp4).then_some(ladder::AUDIO_RENDITION);
        let ready = variants
            .iter()
            .map(|v| v.name.as_str())
            .chain(audio)
            .all(|name| hls_dir.join(name).join("index.m3u8").exists());
        if !ready {
            return;
        }
        let mut masters = vec![("master.m3u8", "index.m3u8")];
        if running.dvr.is_some() {
            masters.push((dvr::FILE, dvr::FILE));
        }
        for (master, media) in masters {
            let text = ladder::master_playlist(variants, media, format);
            if let Err(e) = program::write_atomic(&hls_dir.join(master), &text) {
                warn!(relay = %self.spec.id, error = %e, "cannot write the master playlist");
                return;
            }
        }
        running.master_written = true;
        info!(relay = %self.spec.id, "master playlist written: every rendition has its first segment");
    }

    /// Rebuilds a failed program when due, ends a drain that overran, and resets the
    /// backoff once frames flow.
    pub(super) fn tick_program(&mut self, now: Instant) {
        self.write_master_when_ready();
        if let Some(running) = self.program.as_mut().filter(|r| !r.overload_warned) {
            let dropped = running.program.frames_dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                running.overload_warned = true;
                warn!(relay = %self.spec.id, dropped, "the encoder cannot keep up: dropping frames to keep the program live (the CPU is overloaded; frames_dropped counts them)");
            }
        }
        if self.life.drain_overdue(now) {
            warn!(relay = %self.spec.id, generation = ?self.life.generation(), "program did not drain in time");
            self.teardown_program();
        }
        if self.life.rebuild_due(now) {
            self.run_program();
        }
        if matches!(self.life, Lifecycle::Running { failures, .. } if failures > 0)
            && self
                .program
                .as_ref()
                .is_some_and(|p| p.program.frames.load(Ordering::Relaxed) > 0)
        {
            self.life_event(LifeEvent::Flowing);
        }
    }
}

/// How long after a recording failed a new file is tried.
const RECORD_RETRY: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a recording relay's old files are swept.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Actor {
    /// `<recordings_root>/<id>`, for a relay that records (or recorded) anything.
    pub(super) fn recordings_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.ctx.recordings_root.as_ref()?.join(&self.spec.id))
    }

    /// What the next program records: its dir, split and the shared name of the open file.
    /// The relay's DVR window, never shorter than what the live playlists and the segments
    /// kept beside them cover.
    fn dvr_window(&self) -> Option<std::time::Duration> {
        let asked = self.spec.hls.dvr_window()?;
        let hls = &self.ctx.hls;
        let live = (hls.playlist_length + crate::pipeline::encode::DEFAULT_EXTRA_SEGMENT_FILES)
            * hls.segment_seconds;
        Some(asked.max(std::time::Duration::from_secs(u64::from(live))))
    }

    fn record_params(&self) -> Option<crate::pipeline::record::RecordParams> {
        self.spec.record.as_ref()?;
        Some(crate::pipeline::record::RecordParams {
            dir: self.recordings_dir()?,
            recording: self.recording.clone(),
        })
    }

    /// Starts the recording's next file when the current one is `split` old, and deletes
    /// recordings past their retention or over the budget, every [`SWEEP_EVERY`].
    pub(super) fn sweep_recordings(&mut self, now: Instant) {
        let (Some(record), Some(dir)) = (&self.spec.record, self.recordings_dir()) else {
            return;
        };
        let rules = record.rules(&self.ctx.record);
        let retry = self.record_retry_at.is_some_and(|at| now >= at)
            && self
                .program
                .as_ref()
                .is_some_and(|p| p.program.recording_stopped());
        if retry {
            self.record_retry_at = None;
            info!(relay = %self.spec.id, "trying a new recording file");
        }
        if retry || self.recording.age().is_some_and(|age| age >= rules.split) {
            if let Some(running) = &mut self.program {
                if let Err(e) = running.program.split_recording() {
                    warn!(relay = %self.spec.id, error = %e, "cannot start the recording's next file; the current one goes on");
                }
            }
        }
        if self.swept.is_some_and(|at| now < at + SWEEP_EVERY) {
            return;
        }
        self.swept = Some(now);
        let open = self.recording.current();
        let gone = recordings::sweep(&dir, &rules, open.as_deref());
        if !gone.is_empty() {
            info!(relay = %self.spec.id, files = gone.len(), "old recordings deleted (retention or disk budget)");
        }
    }

    /// Notes a score change: in the HLS playlists (an `EXT-X-DATERANGE`) while a program
    /// runs, and in the open recording's markers (each file begins with the scoreboard on
    /// screen).
    pub(super) fn mark_score(&mut self) {
        let Some((board, _)) = self.scorebug.current() else {
            return;
        };
        let for_hls = self.program.is_some() && self.hls_marked.as_ref() != Some(board);
        let recording = self.recording.current().filter(|path| {
            !self
                .marked
                .as_ref()
                .is_some_and(|(p, b)| p == path && b == board)
        });
        if !for_hls && recording.is_none() {
            return;
        }
        let (board, now) = (board.clone(), std::time::SystemTime::now());
        if for_hls {
            let file = self
                .ctx
                .hls_root
                .join(&self.spec.id)
                .join(crate::pipeline::daterange::FILE);
            let line = crate::pipeline::daterange::line(now, &board);
            if let Err(e) = recordings::append(&file, line.as_bytes()) {
                warn!(relay = %self.spec.id, error = %e, "cannot note a score change for the playlists");
            }
            self.hls_marked = Some(board.clone());
        }
        if let Some(path) = recording {
            if let Err(e) = recordings::append_marker(&path, now, &board) {
                warn!(relay = %self.spec.id, error = %e, "cannot write a score marker");
            }
            self.marked = Some((path, board));
        }
    }
}
