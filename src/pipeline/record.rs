//! A relay's recording: the program's top rendition and its audio, as they go out, written to
//! fragmented MP4 files (no second encode).
//!
//! ```text
//! video-tee-<top> ─ queue "rec-video-q-<n>" ─ h264parse ─┐
//! audio-tee ─ queue "rec-audio-q-<n>" ───────────────────┴► mp4mux (a fragment per keyframe
//!   interval) ─ filesink (unbuffered) "<unix ms>.mp4"
//! ```
//!
//! One branch per file. A file begins with the program, and a new one at each split: the new
//! branch is linked first (starting on a keyframe it asks the encoder for), then the old one
//! is unlinked and ended, so no frame falls between two files. Each file is named by the
//! wall-clock time it was opened. Fragmented and written unbuffered, a file is playable while
//! it is written and after a crash, up to its last complete fragment.
//!
//! Owns these branches and the name of the file being written ([`Recording`]); which files
//! to keep is [`crate::relay::recordings`]'s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gst::prelude::*;

use super::{
    add_elements, drop_data, link_chain, link_tee, make, sync_with_pipeline, unlink_tee_pad,
    PipelineError,
};

/// The muxer's fragment length; it cuts fragments at keyframes, so a fragment is the longer
/// of this and the keyframe interval.
pub const FRAGMENT: Duration = Duration::from_secs(1);
/// How long an ended file's branch may take to write its last fragment before it goes.
const DEFAULT_END_TIMEOUT: Duration = Duration::from_secs(3);

/// The file a program is recording into now, shared with the relay (never delete it).
#[derive(Debug, Default)]
pub struct Recording(Mutex<Option<(PathBuf, std::time::Instant)>>);

impl Recording {
    pub fn current(&self) -> Option<PathBuf> {
        self.0
            .lock()
            .expect("recording lock poisoned")
            .as_ref()
            .map(|(p, _)| p.clone())
    }

    /// How long the current file has been written.
    pub fn age(&self) -> Option<Duration> {
        self.0
            .lock()
            .expect("recording lock poisoned")
            .as_ref()
            .map(|(_, at)| at.elapsed())
    }

    pub fn clear(&self) {
        *self.0.lock().expect("recording lock poisoned") = None;
    }

    fn set(&self, path: PathBuf) {
        *self.0.lock().expect("recording lock poisoned") = Some((path, std::time::Instant::now()));
    }
}

/// What a program records, and where.
#[derive(Debug, Clone)]
pub struct RecordParams {
    /// `<data_dir>/recordings/<relay>`.
    pub dir: PathBuf,
    pub recording: Arc<Recording>,
}

/// One file's branch.
pub struct RecordBranch {
    /// Its number, the suffix of its elements' names.
    pub number: u32,
    elements: Vec<gst::Element>,
    video_q: gst::Element,
    audio_q: gst::Element,
    tee_pads: Vec<(gst::Element, gst::Pad)>,
}

/// The prefix of every recording branch element's name.
const PREFIX: &str = "rec-";

/// The number of the recording branch element `name` belongs to, if it is one.
pub fn branch_of(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.rsplit_once('-')?.1.parse().ok()
}

/// The file name for a recording opened now.
fn file_name(dir: &Path) -> PathBuf {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    dir.join(format!("{ms}.mp4"))
}

/// Starts a new file in `params.dir`: a branch `number` from `video_tee` (H.264) and
/// `audio_tee` (AAC), in `pipeline` (built or running).
pub fn start(
    pipeline: &gst::Pipeline,
    video_tee: &gst::Element,
    audio_tee: &gst::Element,
    params: &RecordParams,
    number: u32,
) -> Result<RecordBranch, PipelineError> {
    std::fs::create_dir_all(&params.dir).map_err(|source| PipelineError::Io {
        path: params.dir.display().to_string(),
        source,
    })?;
    let path = file_name(&params.dir);
    let video_q = make("queue", &format!("{PREFIX}video-q-{number}"))?;
    let parse = make("h264parse", &format!("{PREFIX}parse-{number}"))?;
    let audio_q = make("queue", &format!("{PREFIX}audio-q-{number}"))?;
    // A file that fails (a full disk, say) must not fail the program: the muxer's and the
    // file's errors stop at these, which answer the queues' threads with OK. The bus still
    // reports the error, and the relay ends this branch.
    let guards = [
        make("errorignore", &format!("{PREFIX}video-guard-{number}"))?,
        make("errorignore", &format!("{PREFIX}audio-guard-{number}"))?,
    ];
    let mux = make("mp4mux", &format!("{PREFIX}mux-{number}"))?;
    mux.set_property("fragment-duration", FRAGMENT.as_millis() as u32);
    mux.set_property("streamable", true);
    let file = make("filesink", &format!("{PREFIX}file-{number}"))?;
    file.set_property("location", path.display().to_string());
    // Each fragment reaches the file as the muxer finishes it: a crash loses only the one
    // being built.
    file.set_property_from_str("buffer-mode", "unbuffered");
    file.set_property("async", false);
    let [video_guard, audio_guard] = &guards;
    // The file last: ending the branch waits for its EOS.
    let elements = vec![
        video_q.clone(),
        video_guard.clone(),
        parse.clone(),
        audio_q.clone(),
        audio_guard.clone(),
        mux.clone(),
        file.clone(),
    ];
    add_elements(pipeline, &elements.iter().collect::<Vec<_>>())?;
    link_chain(&[&video_q, video_guard, &parse])?;
    link_chain(&[&audio_q, audio_guard])?;
    let link_error = |from: &gst::Element| PipelineError::Link {
        from: from.name().to_string(),
        to: mux.name().to_string(),
    };
    for (from, template) in [(&parse, "video_%u"), (audio_guard, "audio_%u")] {
        let sink = mux
            .request_pad_simple(template)
            .ok_or_else(|| link_error(from))?;
        from.static_pad("src")
            .ok_or_else(|| link_error(from))?
            .link(&sink)
            .map_err(|_| link_error(from))?;
    }
    link_chain(&[&mux, &file])?;
    start_on_a_keyframe(&video_q, &audio_q);
    for element in [&parse, audio_guard] {
        only_timed(element);
    }
    sync_with_pipeline(&elements)?;
    let tee_pads = vec![
        (video_tee.clone(), link_tee(video_tee, &video_q)?),
        (audio_tee.clone(), link_tee(audio_tee, &audio_q)?),
    ];
    // A running encoder gives the new file its first keyframe now rather than at the next
    // keyframe interval.
    if let Some(pad) = video_q.static_pad("sink") {
        let _ = pad.push_event(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build(),
        );
    }
    params.recording.set(path);
    Ok(RecordBranch {
        number,
        elements,
        video_q,
        audio_q,
        tee_pads,
    })
}

/// Drops what comes before the first video keyframe (video and audio both), so the file
/// starts decodable.
fn start_on_a_keyframe(video_q: &gst::Element, audio_q: &gst::Element) {
    let started = Arc::new(AtomicBool::new(false));
    if let Some(pad) = video_q.static_pad("sink") {
        let started = started.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if started.load(Ordering::Acquire) {
                return gst::PadProbeReturn::Remove;
            }
            let key = info
                .buffer()
                .is_some_and(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT));
            if key {
                started.store(true, Ordering::Release);
                gst::PadProbeReturn::Remove
            } else {
                drop_data(info)
            }
        });
    }
    if let Some(pad) = audio_q.static_pad("sink") {
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if started.load(Ordering::Acquire) {
                gst::PadProbeReturn::Remove
            } else {
                drop_data(info)
            }
        });
    }
}

/// Drops buffers without a timestamp before they reach the muxer, which would fail the whole
/// program on one ("Buffer has no PTS"); seen once in a while as a publisher comes on.
fn only_timed(element: &gst::Element) {
    if let Some(pad) = element.static_pad("src") {
        pad.add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if info.buffer().is_some_and(|b| b.pts().is_none()) {
                return drop_data(info);
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// Ends `branch`'s file off the caller's thread: it is unlinked from the tees, its queues
/// get EOS so the muxer writes its last fragment, then it stops and leaves `pipeline`.
pub fn end(pipeline: &gst::Pipeline, branch: RecordBranch) {
    let pipeline = pipeline.clone();
    std::thread::spawn(move || {
        for (tee, pad) in &branch.tee_pads {
            unlink_tee_pad(tee, pad, DEFAULT_END_TIMEOUT);
        }
        let sink = branch.elements.last().and_then(|f| f.static_pad("sink"));
        let (eos_tx, eos_rx) = std::sync::mpsc::channel();
        if let Some(pad) = &sink {
            pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if matches!(info.event().map(|e| e.view()), Some(gst::EventView::Eos(_))) {
                    let _ = eos_tx.send(());
                    return gst::PadProbeReturn::Drop;
                }
                gst::PadProbeReturn::Ok
            });
        }
        for queue in [&branch.video_q, &branch.audio_q] {
            if let Some(pad) = queue.static_pad("sink") {
                pad.send_event(gst::event::Eos::new());
            }
        }
        if eos_rx.recv_timeout(DEFAULT_END_TIMEOUT).is_err() {
            tracing::warn!(pipeline = %pipeline.name(), "a recording's last fragment was not written in time");
        }
        for element in &branch.elements {
            let _ = element.set_state(gst::State::Null);
            let _ = pipeline.remove(element);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_element_is_known_by_its_name() {
        assert_eq!(branch_of("rec-file-3"), Some(3));
        assert_eq!(branch_of("rec-video-guard-12"), Some(12));
        assert_eq!(branch_of("hls-720p"), None);
        assert_eq!(branch_of("rec-file"), None);
    }
}
