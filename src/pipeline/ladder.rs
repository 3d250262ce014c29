//! The ladder, as plain values: what a relay spec and the program settings ask for becomes the
//! renditions it encodes (tallest first), the encode each destination needs, the master
//! playlist's variants (bandwidth and `CODECS`) and the master playlist's text.
//!
//! Owns those rules. It is pure: it must not create GStreamer elements, touch a pipeline or
//! the file system, or know about running relays. The graph builders ([`super::program`],
//! [`super::encode`]) build what it describes.

use crate::config::ProgramSettings;
use crate::relay::spec::{self, OutputSpec, RelaySpec, RenditionSpec, SegmentFormat, SpecError};

/// The name of a passthrough relay's one rendition.
pub const SOURCE_RENDITION: &str = "source";
/// fMP4's audio rendition: its directory, and the `GROUP-ID` every variant names.
pub const AUDIO_RENDITION: &str = "audio";
/// The lowest video bitrate (kb/s) a destination's own encode gets.
const MIN_DESTINATION_KBPS: u32 = 100;

/// One HLS rendition: its name, frame size and video bitrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
}

impl Rendition {
    /// A rendition `height` pixels tall at the program's aspect ratio, or `None` when it would
    /// upscale.
    pub fn for_program(
        name: &str,
        height: u32,
        video_kbps: u32,
        program: &ProgramSettings,
    ) -> Option<Self> {
        if height > program.height {
            return None;
        }
        Some(Self {
            name: name.to_owned(),
            width: width_for(height, program),
            height,
            video_kbps,
        })
    }

    /// A passthrough relay's one rendition: the publisher's own stream, described (size,
    /// bitrate) only once it flows.
    pub fn source() -> Self {
        Self {
            name: SOURCE_RENDITION.to_owned(),
            width: 0,
            height: 0,
            video_kbps: 0,
        }
    }

    /// The encode that produces this rendition, with the program's GOP.
    pub fn encode(&self, p: &ProgramSettings) -> Encode {
        Encode {
            width: self.width,
            height: self.height,
            video_kbps: self.video_kbps,
            gop_frames: p.fps * p.gop_seconds,
        }
    }
}

/// The even frame width that keeps the program's aspect ratio at `height`.
pub fn width_for(height: u32, program: &ProgramSettings) -> u32 {
    (u64::from(program.width) * u64::from(height) / u64::from(program.height)) as u32 & !1
}

/// What an x264 encode is, as far as sharing it goes: destinations whose encodes are equal
/// share one encoder and one FLV mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Encode {
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    pub gop_frames: u32,
}

impl Encode {
    /// A name for its elements: `1280x720-3000k-g60`.
    pub fn label(&self) -> String {
        format!(
            "{}x{}-{}k-g{}",
            self.width, self.height, self.video_kbps, self.gop_frames
        )
    }
}

/// The renditions relay `spec` encodes, tallest first, checked against the program format.
/// A passthrough relay has one, [`Rendition::source`]; a relay naming none gets one at the
/// program's own size and bitrate.
pub fn renditions(
    spec: &RelaySpec,
    program: &ProgramSettings,
) -> Result<Vec<Rendition>, SpecError> {
    let p = program;
    spec.check_fits(p.width, p.height)?;
    if !spec.transcode {
        return Ok(vec![Rendition::source()]);
    }
    let mut renditions: Vec<Rendition> = spec
        .hls
        .renditions
        .iter()
        .map(|r| match r {
            RenditionSpec::Custom(c) => Rendition {
                name: c.name.clone(),
                width: c.width,
                height: c.height,
                video_kbps: c.video_kbps,
            },
            preset => {
                let (height, kbps) = preset.height_and_kbps().expect("validated preset");
                Rendition::for_program(preset.name(), height, kbps, p)
                    .expect("check_fits rules out upscaling")
            }
        })
        .collect();
    if renditions.is_empty() {
        renditions.push(
            Rendition::for_program(&format!("{}p", p.height), p.height, p.video_kbps, p)
                .expect("the program's own size"),
        );
    }
    renditions.sort_by_key(|r| std::cmp::Reverse((r.height, r.video_kbps)));
    Ok(renditions)
}

/// The encode destination `out` of `relay` needs, or `None` when the top rendition's
/// (`top`) serves: the same size and bitrate, and the preset's GOP. A height of its own
/// without a bitrate takes the rendition preset's bitrate for that height, or else the top
/// rendition's scaled by the pixel count; the preset's ceiling applies either way, and
/// [`MIN_DESTINATION_KBPS`] is the floor. A passthrough relay has no encode to give.
pub fn destination_encode(
    relay: &RelaySpec,
    out: &OutputSpec,
    top: &Rendition,
    program: &ProgramSettings,
) -> Option<Encode> {
    let p = program;
    let max = out.preset_max_kbps().unwrap_or(u32::MAX);
    let height = out.height.unwrap_or(top.height);
    let kbps = out.video_kbps.unwrap_or_else(|| {
        if height == top.height {
            return top.video_kbps;
        }
        spec::RENDITION_PRESETS
            .iter()
            .find(|(_, h, _)| *h == height)
            .map(|(_, _, kbps)| *kbps)
            .unwrap_or_else(|| {
                let scale = f64::from(height) / f64::from(top.height);
                (f64::from(top.video_kbps) * scale * scale) as u32
            })
    });
    let encode = Encode {
        width: if height == top.height {
            top.width
        } else {
            width_for(height, p)
        },
        height,
        video_kbps: kbps.clamp(MIN_DESTINATION_KBPS, max),
        gop_frames: p.fps * spec::OUTPUT_GOP_SECONDS,
    };
    (relay.transcode && encode != top.encode(p)).then_some(encode)
}

/// The `CODECS` value of H.264 High at the lowest level that fits `width`x`height` at `fps`,
/// with AAC-LC.
pub fn codecs(width: u32, height: u32, fps: u32) -> String {
    let macroblocks = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let per_second = macroblocks * u64::from(fps);
    // (level_idc, MaxFS, MaxMBPS) from H.264 table A-1.
    const LEVELS: &[(u32, u64, u64)] = &[
        (30, 1_620, 40_500),
        (31, 3_600, 108_000),
        (32, 5_120, 216_000),
        (40, 8_192, 245_760),
        (42, 8_704, 522_240),
        (50, 22_080, 589_824),
        (51, 36_864, 983_040),
    ];
    let level = LEVELS
        .iter()
        .find(|(_, fs, mbps)| macroblocks <= *fs && per_second <= *mbps)
        .map(|(l, _, _)| *l)
        .unwrap_or(52);
    format!("avc1.6400{level:02x},mp4a.40.2")
}

/// One `EXT-X-STREAM-INF` entry of the master playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 when the publisher's stream does not say (then left out).
    pub fps: f64,
    pub codecs: String,
    /// Bits per second, MPEG-TS overhead included.
    pub average: u64,
    pub peak: u64,
}

impl Variant {
    /// A transcoded rendition: its bitrates follow from the CBR settings plus what MPEG-TS
    /// adds. Fitted to segments measured on this project's test runs (720p/480p/360p within
    /// 2 %): about 6 % on video (4-byte headers per 184 bytes, and x264's CBR running a little
    /// over), a padded packet per frame, 12 % on AAC (each ~360-byte frame takes two 188-byte
    /// packets), and ~30 kb/s of PAT, PMT and PCR.
    pub fn for_rendition(r: &Rendition, p: &ProgramSettings) -> Self {
        let video = u64::from(r.video_kbps) * 1000;
        let audio = u64::from(p.audio_kbps) * 1000;
        let per_frame_padding = 110 * 8 * u64::from(p.fps);
        let tables = 30_000;
        let average = video * 106 / 100 + per_frame_padding + audio * 112 / 100 + tables;
        Self {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            fps: f64::from(p.fps),
            codecs: codecs(r.width, r.height, p.fps),
            average,
            // CBR with a one-second VBV: a segment can carry up to a second's extra bits.
            peak: average * 5 / 4,
        }
    }
}

/// The RFC 6381 name of an H.264 stream from h264parse's `profile` and `level` caps fields.
pub fn avc1(profile: &str, level: &str) -> Option<String> {
    let (profile_idc, constraints) = match profile {
        "constrained-baseline" => (0x42, 0xe0),
        "baseline" => (0x42, 0x00),
        "main" => (0x4d, 0x40),
        "extended" => (0x58, 0x00),
        "high" => (0x64, 0x00),
        "high-10" => (0x6e, 0x00),
        "high-4:2:2" => (0x7a, 0x00),
        "high-4:4:4" => (0xf4, 0x00),
        _ => return None,
    };
    let level_idc = match level {
        "1b" => 11,
        _ => {
            let (major, minor) = level.split_once('.').unwrap_or((level, "0"));
            major.parse::<u32>().ok()? * 10 + minor.parse::<u32>().ok()?
        }
    };
    Some(format!(
        "avc1.{profile_idc:02x}{constraints:02x}{level_idc:02x}"
    ))
}

/// The master playlist naming every variant's media playlist, `media` in its directory
/// (`index.m3u8`, or the DVR's). With fMP4 segments the audio is a rendition of its own
/// ([`AUDIO_RENDITION`]) that every variant names.
pub fn master_playlist(variants: &[Variant], media: &str, format: SegmentFormat) -> String {
    let mut out = String::from("#EXTM3U\n");
    let audio = match format {
        SegmentFormat::Ts => {
            out.push_str("#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
            ""
        }
        SegmentFormat::Fmp4 => {
            out.push_str(&format!(
                "#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
                 #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{AUDIO_RENDITION}\",NAME=\"{AUDIO_RENDITION}\",\
                 DEFAULT=YES,AUTOSELECT=YES,URI=\"{AUDIO_RENDITION}/{media}\"\n"
            ));
            ",AUDIO=\"audio\""
        }
    };
    for v in variants {
        let frame_rate = if v.fps > 0.0 {
            format!(",FRAME-RATE={:.3}", v.fps)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},RESOLUTION={}x{}{frame_rate},CODECS=\"{}\"{audio}\n{}/{media}\n",
            v.peak, v.average, v.width, v.height, v.codecs, v.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::spec::{CustomRendition, IngestSpec};

    fn rendition(name: &str, height: u32) -> Rendition {
        Rendition::for_program(name, height, 3000, &ProgramSettings::default()).expect("no upscale")
    }

    /// A pushed relay with these renditions and no destination.
    fn relay(renditions: &[RenditionSpec]) -> RelaySpec {
        RelaySpec {
            id: "final".to_owned(),
            ingest: IngestSpec {
                stream_key: Some("final-key".to_owned()),
                ..IngestSpec::default()
            },
            overlay: None,
            hls: spec::HlsSpec {
                renditions: renditions.to_vec(),
                ..Default::default()
            },
            outputs: Vec::new(),
            transcode: true,
            queue: None,
            record: None,
            graphics: None,
        }
    }

    fn preset(name: &str) -> RenditionSpec {
        RenditionSpec::Preset(name.to_owned())
    }

    fn names(renditions: &[Rendition]) -> Vec<&str> {
        renditions.iter().map(|r| r.name.as_str()).collect()
    }

    /// The 720p program's top rendition (the default program is 1280x720 at 3000 kb/s).
    fn top() -> Rendition {
        rendition("720p", 720)
    }

    fn destination(height: Option<u32>, video_kbps: Option<u32>, preset: &str) -> OutputSpec {
        OutputSpec {
            height,
            video_kbps,
            preset: preset.to_owned(),
            ..OutputSpec::new("youtube", "rtmp://example.com/live/key")
        }
    }

    #[test]
    fn renditions_keep_the_program_aspect_and_never_upscale() {
        assert_eq!(rendition("720p", 720).width, 1280);
        assert_eq!(rendition("360p", 360).width, 640);
        assert_eq!(rendition("480p", 480).width, 852);
        assert!(Rendition::for_program("1080p", 1080, 6000, &ProgramSettings::default()).is_none());
    }

    #[test]
    fn presets_become_renditions_tallest_first() {
        let p = ProgramSettings::default();
        let got = renditions(
            &relay(&[preset("360p"), preset("720p"), preset("480p")]),
            &p,
        )
        .expect("fits");
        assert_eq!(names(&got), ["720p", "480p", "360p"]);
        assert_eq!(
            got[1],
            Rendition {
                name: "480p".to_owned(),
                width: 852,
                height: 480,
                video_kbps: 1400,
            }
        );
        assert_eq!((got[2].width, got[2].video_kbps), (640, 800));
    }

    #[test]
    fn a_custom_rendition_is_taken_as_given_and_sorted_by_height_then_bitrate() {
        let p = ProgramSettings::default();
        let custom = |name: &str, kbps| {
            RenditionSpec::Custom(CustomRendition {
                name: name.to_owned(),
                width: 960,
                height: 540,
                video_kbps: kbps,
            })
        };
        let got = renditions(
            &relay(&[preset("360p"), custom("mid-low", 1500), custom("mid", 2000)]),
            &p,
        )
        .expect("fits");
        assert_eq!(names(&got), ["mid", "mid-low", "360p"]);
        assert_eq!((got[0].width, got[0].height), (960, 540));
    }

    #[test]
    fn no_rendition_named_means_one_at_the_program_size() {
        let p = ProgramSettings {
            video_kbps: 2500,
            ..ProgramSettings::default()
        };
        let got = renditions(&relay(&[]), &p).expect("fits");
        assert_eq!(
            got,
            [Rendition {
                name: "720p".to_owned(),
                width: 1280,
                height: 720,
                video_kbps: 2500,
            }]
        );
    }

    #[test]
    fn a_rendition_taller_than_the_program_is_refused_by_its_field() {
        let err = renditions(
            &relay(&[preset("720p"), preset("1080p")]),
            &ProgramSettings::default(),
        )
        .expect_err("1080p upscales a 720p program");
        assert_eq!(err.field, "hls.renditions[1]");
    }

    #[test]
    fn passthrough_has_the_source_rendition_only() {
        let spec = RelaySpec {
            transcode: false,
            ..relay(&[])
        };
        let got = renditions(&spec, &ProgramSettings::default()).expect("fits");
        assert_eq!(got, [Rendition::source()]);
        assert_eq!(got[0].name, SOURCE_RENDITION);
    }

    #[test]
    fn a_destination_like_the_top_rendition_shares_its_encode() {
        let p = ProgramSettings {
            gop_seconds: spec::OUTPUT_GOP_SECONDS,
            ..ProgramSettings::default()
        };
        let out = destination(None, None, "youtube");
        assert_eq!(destination_encode(&relay(&[]), &out, &top(), &p), None);
        // Naming the top rendition's own height and bitrate changes nothing.
        let out = destination(Some(720), Some(3000), "youtube");
        assert_eq!(destination_encode(&relay(&[]), &out, &top(), &p), None);
    }

    #[test]
    fn a_destination_gets_the_presets_gop() {
        let p = ProgramSettings {
            gop_seconds: 4,
            ..ProgramSettings::default()
        };
        let out = destination(None, None, "youtube");
        let encode = destination_encode(&relay(&[]), &out, &top(), &p).expect("own GOP");
        assert_eq!(
            encode,
            Encode {
                width: 1280,
                height: 720,
                video_kbps: 3000,
                gop_frames: p.fps * spec::OUTPUT_GOP_SECONDS,
            }
        );
    }

    #[test]
    fn a_destination_height_takes_the_preset_bitrate_or_scales_the_top_one() {
        let p = ProgramSettings::default();
        let gop = p.fps * spec::OUTPUT_GOP_SECONDS;
        let at = |height| {
            destination_encode(
                &relay(&[]),
                &destination(Some(height), None, "youtube"),
                &top(),
                &p,
            )
            .expect("an encode of its own")
        };
        assert_eq!(
            at(480),
            Encode {
                width: 852,
                height: 480,
                video_kbps: 1400,
                gop_frames: gop,
            }
        );
        // No preset at 540p: the top bitrate scaled by the pixel count, (540/720)² = 0.5625.
        assert_eq!((at(540).width, at(540).video_kbps), (960, 1687));
        // A tiny frame is still given the floor.
        assert_eq!(at(120).video_kbps, MIN_DESTINATION_KBPS);
    }

    #[test]
    fn a_destination_bitrate_is_held_under_its_presets_ceiling() {
        let p = ProgramSettings::default();
        let top = Rendition {
            video_kbps: 8000,
            ..top()
        };
        let twitch = destination(None, None, "twitch");
        let encode = destination_encode(&relay(&[]), &twitch, &top, &p).expect("capped");
        assert_eq!(encode.video_kbps, 6000);
        // Asked for explicitly, too.
        let twitch = destination(None, Some(7000), "twitch");
        let encode = destination_encode(&relay(&[]), &twitch, &top, &p).expect("capped");
        assert_eq!(encode.video_kbps, 6000);
        let youtube = destination(None, Some(7000), "youtube");
        let encode = destination_encode(&relay(&[]), &youtube, &top, &p).expect("own bitrate");
        assert_eq!(encode.video_kbps, 7000);
    }

    #[test]
    fn a_passthrough_destination_takes_the_publishers_stream() {
        let spec = RelaySpec {
            transcode: false,
            ..relay(&[])
        };
        let out = destination(Some(360), Some(800), "youtube");
        assert_eq!(
            destination_encode(
                &spec,
                &out,
                &Rendition::source(),
                &ProgramSettings::default()
            ),
            None
        );
    }

    #[test]
    fn encode_labels_name_size_bitrate_and_gop() {
        let encode = top().encode(&ProgramSettings::default());
        assert_eq!(encode.label(), "1280x720-3000k-g60");
    }

    #[test]
    fn codecs_follow_the_h264_level_table() {
        assert_eq!(codecs(1280, 720, 30), "avc1.64001f,mp4a.40.2");
        assert_eq!(codecs(640, 360, 30), "avc1.64001e,mp4a.40.2");
        assert_eq!(codecs(1920, 1080, 30), "avc1.640028,mp4a.40.2");
        assert_eq!(codecs(1280, 720, 60), "avc1.640020,mp4a.40.2");
    }

    #[test]
    fn variants_add_the_transport_overhead_to_the_cbr_rates() {
        let p = ProgramSettings::default();
        let v = Variant::for_rendition(&rendition("360p", 360), &p);
        // 3000 kb/s × 1.06 + 110 B × 8 × 30 + 128 kb/s × 1.12 + 30 kb/s.
        assert_eq!(v.average, 3_180_000 + 26_400 + 143_360 + 30_000);
        assert_eq!(v.peak, v.average * 5 / 4);
        assert_eq!(v.codecs, "avc1.64001e,mp4a.40.2");
        assert_eq!((v.width, v.height, v.fps), (640, 360, 30.0));
    }

    #[test]
    fn master_playlist_names_every_attribute() {
        let p = ProgramSettings::default();
        let text = master_playlist(
            &[
                Variant::for_rendition(&rendition("720p", 720), &p),
                Variant::for_rendition(&rendition("360p", 360), &p),
            ],
            "index.m3u8",
            SegmentFormat::Ts,
        );
        assert!(text.starts_with("#EXTM3U\n"));
        assert!(text.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
        for attr in [
            "BANDWIDTH=4224700",
            "AVERAGE-BANDWIDTH=3379760",
            "RESOLUTION=1280x720",
            "RESOLUTION=640x360",
            "FRAME-RATE=30.000",
            "CODECS=\"avc1.64001f,mp4a.40.2\"",
        ] {
            assert!(text.contains(attr), "{attr} missing from\n{text}");
        }
        assert!(text.ends_with("360p/index.m3u8\n"));
    }

    #[test]
    fn an_fmp4_master_names_the_audio_rendition_in_every_variant() {
        let p = ProgramSettings::default();
        let variants = [
            Variant::for_rendition(&rendition("720p", 720), &p),
            Variant::for_rendition(&rendition("360p", 360), &p),
        ];
        let text = master_playlist(&variants, "dvr.m3u8", SegmentFormat::Fmp4);
        assert!(text.contains("#EXT-X-VERSION:7\n"), "{text}");
        assert!(
            text.contains(
                "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"audio\",DEFAULT=YES,\
                 AUTOSELECT=YES,URI=\"audio/dvr.m3u8\"\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches(",AUDIO=\"audio\"\n").count(), 2, "{text}");
        assert!(text.ends_with("360p/dvr.m3u8\n"));
    }

    #[test]
    fn a_variant_without_a_frame_rate_leaves_it_out() {
        let text = master_playlist(
            &[Variant {
                name: SOURCE_RENDITION.to_owned(),
                width: 1920,
                height: 1080,
                fps: 0.0,
                codecs: "avc1.640028,mp4a.40.2".to_owned(),
                average: 5_000_000,
                peak: 6_000_000,
            }],
            "index.m3u8",
            SegmentFormat::Ts,
        );
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=6000000,AVERAGE-BANDWIDTH=5000000,\
             RESOLUTION=1920x1080,CODECS=\"avc1.640028,mp4a.40.2\"\n\
             source/index.m3u8\n"
        );
    }

    #[test]
    fn publisher_codecs_are_named_as_rfc_6381_wants() {
        assert_eq!(avc1("high", "3.1").as_deref(), Some("avc1.64001f"));
        assert_eq!(avc1("main", "4").as_deref(), Some("avc1.4d4028"));
        assert_eq!(
            avc1("constrained-baseline", "3").as_deref(),
            Some("avc1.42e01e")
        );
        assert_eq!(avc1("baseline", "1b").as_deref(), Some("avc1.42000b"));
        assert_eq!(avc1("unknown", "3"), None);
    }
}
