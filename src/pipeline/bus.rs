//! What a relay's pipelines say on their buses, sorted into what the relay actor reacts to.
//!
//! Owns the vocabulary: the names of the element and application messages that scorecast's
//! graphs post (or read from `hlssink3`), [`BusError`], [`ProgramEvent`] and [`classify`].
//! The forwarding filter and the actor's handler both go through [`classify`], so they cannot
//! disagree about what a message means. It must not act on a message or keep state: the
//! relay actor decides what each event costs.

use std::path::PathBuf;

use gst::prelude::*;

use super::input;

/// The application message a ping sends round a program's bus (see [`ping`]).
pub const PING_MESSAGE: &str = "scorecast-ping";
/// The element message posted when the switch changes input; field `slate` (bool).
pub const INPUT_SWITCHED: &str = "scorecast-input-switched";
/// The element message posted when an ingest branch's stream ends; field `branch` (its name).
pub const INGEST_ENDED: &str = "scorecast-ingest-ended";
/// The element message hlssink3 posts when it adds a segment to its playlist; fields
/// `location` (the segment's file) and `duration`.
pub const SEGMENT_ADDED: &str = "hls-segment-added";

/// An error posted on a bus, owned and naming the element by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {message}")]
pub struct BusError {
    pub element: String,
    pub message: String,
    pub debug: Option<String>,
}

impl BusError {
    /// Extracts the owned error from a bus `Error` message.
    pub fn from_message(err: &gst::message::Error) -> Self {
        let element = err
            .src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_else(|| "<unknown>".to_owned());
        Self {
            element,
            message: err.error().to_string(),
            debug: err.debug().map(|d| d.to_string()),
        }
    }
}

/// A segment an HLS sink has just added to its playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub location: PathBuf,
    pub duration: gst::ClockTime,
}

/// A bus message the relay actor acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramEvent {
    /// An element failed. `ingest_branch` names the `ingest-<n>` bin it sits in, if any: such
    /// an error costs that input, not the program.
    Error {
        error: BusError,
        ingest_branch: Option<String>,
    },
    /// An element of recording branch `number` failed: that file, not the program.
    RecordingFailed { number: u32, error: BusError },
    /// The pipeline's stream ended.
    Eos,
    /// An element's latency changed: the pipeline's must be recalculated.
    Latency,
    /// A [`ping`] came back.
    Ping,
    /// The switch took the slate (`slate`) or the publisher ([`INPUT_SWITCHED`]).
    InputSwitched { slate: bool },
    /// An ingest branch's stream ended ([`INGEST_ENDED`]).
    IngestEnded { branch: String },
    /// An HLS sink added a segment ([`SEGMENT_ADDED`]).
    SegmentAdded(Segment),
}

/// What `message` means to the relay actor, or `None` when it need not see it. Element
/// messages are matched by name: any other (a sink's own statistics, say) is nothing.
pub fn classify(message: &gst::Message) -> Option<ProgramEvent> {
    match message.view() {
        gst::MessageView::Error(err) => {
            let error = BusError::from_message(err);
            let recording = err
                .src()
                .and_then(|src| super::record::branch_of(&src.name()));
            Some(match recording {
                Some(number) => ProgramEvent::RecordingFailed { number, error },
                None => ProgramEvent::Error {
                    error,
                    ingest_branch: err.src().and_then(input::ingest_branch_of),
                },
            })
        }
        gst::MessageView::Eos(_) => Some(ProgramEvent::Eos),
        gst::MessageView::Latency(_) => Some(ProgramEvent::Latency),
        gst::MessageView::Application(a) => a
            .structure()
            .is_some_and(|s| s.name() == PING_MESSAGE)
            .then_some(ProgramEvent::Ping),
        gst::MessageView::Element(e) => {
            let s = e.structure()?;
            match s.name().as_str() {
                INPUT_SWITCHED => Some(ProgramEvent::InputSwitched {
                    slate: s.get::<bool>("slate").unwrap_or(true),
                }),
                INGEST_ENDED => Some(ProgramEvent::IngestEnded {
                    branch: s.get::<String>("branch").unwrap_or_default(),
                }),
                SEGMENT_ADDED => Some(ProgramEvent::SegmentAdded(Segment {
                    location: PathBuf::from(s.get::<&str>("location").ok()?),
                    duration: s.get::<gst::ClockTime>("duration").ok()?,
                })),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The message to post on a program's bus to see it come back as [`ProgramEvent::Ping`].
pub fn ping() -> gst::Message {
    gst::message::Application::builder(gst::Structure::new_empty(PING_MESSAGE)).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() {
        gst::init().expect("GStreamer initialises");
    }

    fn element_message(s: gst::Structure) -> gst::Message {
        gst::message::Element::builder(s).build()
    }

    #[test]
    fn the_relays_own_element_messages_are_named_events() {
        init();
        let switched = gst::Structure::builder(INPUT_SWITCHED)
            .field("slate", false)
            .build();
        assert_eq!(
            classify(&element_message(switched)),
            Some(ProgramEvent::InputSwitched { slate: false })
        );
        // A switch message that does not say is taken as the slate.
        assert_eq!(
            classify(&element_message(gst::Structure::new_empty(INPUT_SWITCHED))),
            Some(ProgramEvent::InputSwitched { slate: true })
        );
        let ended = gst::Structure::builder(INGEST_ENDED)
            .field("branch", "ingest-3")
            .build();
        assert_eq!(
            classify(&element_message(ended)),
            Some(ProgramEvent::IngestEnded {
                branch: "ingest-3".to_owned()
            })
        );
    }

    #[test]
    fn a_segment_is_only_hlssinks_segment_message() {
        init();
        let added = gst::Structure::builder(SEGMENT_ADDED)
            .field("location", "/data/hls/final/source/segment0-00000.ts")
            .field("running-time", gst::ClockTime::ZERO)
            .field("duration", gst::ClockTime::from_seconds(4))
            .build();
        assert_eq!(
            classify(&element_message(added)),
            Some(ProgramEvent::SegmentAdded(Segment {
                location: PathBuf::from("/data/hls/final/source/segment0-00000.ts"),
                duration: gst::ClockTime::from_seconds(4),
            }))
        );
        // Any other element message is nothing to the relay (it used to be taken as a segment).
        for other in [
            "GstMultiQueueLevel",
            "splitmuxsink-fragment-closed",
            "level",
        ] {
            assert_eq!(
                classify(&element_message(gst::Structure::new_empty(other))),
                None,
                "{other}"
            );
        }
        // A segment message without its fields describes nothing.
        assert_eq!(
            classify(&element_message(gst::Structure::new_empty(SEGMENT_ADDED))),
            None
        );
    }

    #[test]
    fn pings_eos_and_latency_are_recognised_and_other_application_messages_are_not() {
        init();
        assert_eq!(classify(&ping()), Some(ProgramEvent::Ping));
        let other = gst::message::Application::builder(gst::Structure::new_empty("x")).build();
        assert_eq!(classify(&other), None);
        assert_eq!(
            classify(&gst::message::Eos::builder().build()),
            Some(ProgramEvent::Eos)
        );
        assert_eq!(
            classify(&gst::message::Latency::builder().build()),
            Some(ProgramEvent::Latency)
        );
        let state = gst::message::StateChanged::builder(
            gst::State::Paused,
            gst::State::Playing,
            gst::State::VoidPending,
        )
        .build();
        assert_eq!(classify(&state), None);
    }

    #[test]
    fn an_error_names_its_element_and_the_ingest_branch_it_came_from() {
        init();
        let error = |src: &gst::Element| {
            gst::message::Error::builder(gst::CoreError::Failed, "it broke")
                .src(src)
                .debug("details")
                .build()
        };
        let pipeline = gst::Pipeline::with_name("relay-final");
        let branch = gst::Bin::with_name("ingest-2");
        let decode = gst::ElementFactory::make("identity")
            .name("decode")
            .build()
            .expect("identity exists");
        branch.add(&decode).expect("add to the branch");
        let overlay = gst::ElementFactory::make("identity")
            .name("overlay")
            .build()
            .expect("identity exists");
        pipeline
            .add_many([branch.upcast_ref::<gst::Element>(), &overlay])
            .expect("add to the pipeline");

        assert_eq!(
            classify(&error(&decode)),
            Some(ProgramEvent::Error {
                error: BusError {
                    element: "/GstPipeline:relay-final/GstBin:ingest-2/GstIdentity:decode"
                        .to_owned(),
                    message: "it broke".to_owned(),
                    debug: Some("details".to_owned()),
                },
                ingest_branch: Some("ingest-2".to_owned()),
            })
        );
        let Some(ProgramEvent::Error {
            error,
            ingest_branch,
        }) = classify(&error(&overlay))
        else {
            panic!("an error is an error event");
        };
        assert_eq!(
            error.element,
            "/GstPipeline:relay-final/GstIdentity:overlay"
        );
        assert_eq!(ingest_branch, None);
    }
}
