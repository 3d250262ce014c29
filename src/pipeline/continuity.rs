//! HLS continuity from one program to the next: a relay's media sequence keeps rising, and a
//! discontinuity marks where its timeline broke (the daemon restarted, the operator stopped
//! and started the relay, or its program was rebuilt after a failure).
//!
//! `hlssink3` numbers each program's segments from 0. Before a new program wipes the relay's
//! HLS directory, [`next`] counts what the previous one wrote and keeps the running totals in
//! `continuity.json` there; the HTTP server [`rewrite`]s each media playlist as it serves it.
//! Owns that file and the rewrite; it must not touch pipelines.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file, in a relay's HLS directory, that carries the totals across programs.
pub const FILE: &str = "continuity.json";

/// What earlier programs left behind, as the current one's playlists must account for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuity {
    /// Segments earlier programs wrote: added to every media sequence number.
    pub sequence_base: u64,
    /// Timeline breaks before this program; the last one is at its first segment.
    pub discontinuities: u64,
}

/// The continuity of the next program in `dir`, from what the previous one left there.
/// Renditions are counted alike (the tallest count wins), so their numbers stay aligned.
pub fn next(dir: &Path) -> Continuity {
    let previous = load(dir).unwrap_or_default();
    let written = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("index.m3u8")).ok())
        .map(|text| segments_written(&text))
        .max()
        .unwrap_or(0);
    if written == 0 {
        return previous;
    }
    Continuity {
        sequence_base: previous.sequence_base + written,
        discontinuities: previous.discontinuities + 1,
    }
}

/// The continuity the current program in `dir` was started with, if it recorded one.
pub fn load(dir: &Path) -> Option<Continuity> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records `continuity` for the program about to write into `dir`.
pub fn save(dir: &Path, continuity: &Continuity) -> Result<(), super::PipelineError> {
    let text = serde_json::to_string(continuity).expect("two integers serialise");
    super::program::write_atomic(&dir.join(FILE), &text)
}

/// How many segments a media playlist's program wrote in all: its media sequence plus the
/// segments it still lists.
fn segments_written(text: &str) -> u64 {
    let sequence = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let listed = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count() as u64;
    sequence + listed
}

/// A media playlist as players must see it: its media sequence shifted past earlier
/// programs' segments, with `EXT-X-DISCONTINUITY-SEQUENCE`, and `EXT-X-DISCONTINUITY`
/// before this program's first segment while it is listed.
pub fn rewrite(playlist: &str, c: &Continuity) -> String {
    if *c == Continuity::default() {
        return playlist.to_owned();
    }
    let raw_sequence = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // The break sits before segment 0; once that has left the window it is counted.
    let first_listed = raw_sequence == 0 && c.discontinuities > 0;
    let discontinuity_sequence = c.discontinuities - u64::from(first_listed);
    let numbering = {
        let mut tags = format!("#EXT-X-MEDIA-SEQUENCE:{}\n", raw_sequence + c.sequence_base);
        if c.discontinuities > 0 {
            tags.push_str(&format!(
                "#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}\n"
            ));
        }
        tags
    };
    let mut out = String::with_capacity(playlist.len() + 64);
    let mut numbered = false;
    let mut marked = !first_listed;
    for line in playlist.lines() {
        if line.starts_with("#EXT-X-MEDIA-SEQUENCE:") {
            out.push_str(&numbering);
            numbered = true;
            continue;
        }
        let starts_segment =
            line.starts_with("#EXTINF:") || line.starts_with("#EXT-X-PROGRAM-DATE-TIME:");
        // hlssink3 leaves the tag out while the sequence is 0; it must precede the segments.
        if starts_segment && !numbered {
            out.push_str(&numbering);
            numbered = true;
        }
        if starts_segment && !marked {
            out.push_str("#EXT-X-DISCONTINUITY\n");
            marked = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playlist(sequence: u64, segments: &[&str]) -> String {
        let mut text = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:{sequence}\n"
        );
        for s in segments {
            text.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-21T10:00:00.000Z\n#EXTINF:4,\n{s}\n"
            ));
        }
        text
    }

    #[test]
    fn a_first_program_is_served_as_written() {
        let text = playlist(0, &["a.ts", "b.ts"]);
        assert_eq!(rewrite(&text, &Continuity::default()), text);
    }

    #[test]
    fn later_programs_continue_the_sequence_after_a_marked_break() {
        let c = Continuity {
            sequence_base: 120,
            discontinuities: 1,
        };
        let served = rewrite(&playlist(0, &["a.ts", "b.ts"]), &c);
        assert!(served.contains("#EXT-X-MEDIA-SEQUENCE:120\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n"));
        assert_eq!(served.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
        let before_first = served.split("a.ts").next().unwrap_or_default();
        assert!(before_first.ends_with("#EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-11-21T10:00:00.000Z\n#EXTINF:4,\n"), "{served}");
        // Once the first segment has left the window, the break is counted instead.
        let served = rewrite(&playlist(3, &["d.ts", "e.ts"]), &c);
        assert!(served.contains("#EXT-X-MEDIA-SEQUENCE:123\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
        assert!(!served.contains("#EXT-X-DISCONTINUITY\n"));
    }

    #[test]
    fn a_playlist_without_a_sequence_tag_gets_one_before_its_segments() {
        let c = Continuity {
            sequence_base: 4,
            discontinuities: 1,
        };
        let written = playlist(0, &["a.ts"]).replace("#EXT-X-MEDIA-SEQUENCE:0\n", "");
        let served = rewrite(&written, &c);
        let before_first = served.split("a.ts").next().unwrap_or_default();
        assert!(
            before_first.ends_with(
                "#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:4\n\
                 #EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-DISCONTINUITY\n\
                 #EXT-X-PROGRAM-DATE-TIME:2026-11-21T10:00:00.000Z\n#EXTINF:4,\n"
            ),
            "{served}"
        );
    }

    #[test]
    fn the_next_program_counts_what_the_last_one_wrote() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Nothing written yet: nothing breaks.
        assert_eq!(next(dir.path()), Continuity::default());
        for (rendition, sequence) in [("720p", 7), ("360p", 6)] {
            let sub = dir.path().join(rendition);
            std::fs::create_dir_all(&sub).expect("rendition dir");
            std::fs::write(
                sub.join("index.m3u8"),
                playlist(sequence, &["x.ts", "y.ts"]),
            )
            .expect("playlist");
        }
        save(
            dir.path(),
            &Continuity {
                sequence_base: 100,
                discontinuities: 2,
            },
        )
        .expect("save");
        assert_eq!(
            next(dir.path()),
            Continuity {
                sequence_base: 109,
                discontinuities: 3
            }
        );
    }
}
