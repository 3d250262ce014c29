//! The DVR playlist: beside each rendition's live `index.m3u8` (hlssink3's, a window of a few
//! segments), a `dvr.m3u8` listing every segment of the last `hls.dvr` of the program, so
//! players can scrub back. It carries on across programs (a restart, a rebuild) with a
//! discontinuity, numbered as the live playlists are served (see [`super::continuity`]).
//!
//! `dvr.m3u8` is its own state: each update reads it, appends what the live playlist lists
//! beyond it, drops what fell out of the window, and writes it again. The segment files it
//! lists are kept (hlssink3 is told to delete none); those it drops are deleted here.
//! Owns that file and the segments' lifetime while a DVR is on. It must not touch pipelines.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use super::continuity::Continuity;

/// Each rendition's DVR playlist, and the relay's DVR master playlist.
pub const FILE: &str = "dvr.m3u8";

/// One segment of a playlist, with the tags that belong to it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// Its media sequence number as players see it.
    sequence: u64,
    /// A timeline break before it.
    discontinuity: bool,
    /// The `EXT-X-MAP` line in force (fMP4), if any.
    map: Option<String>,
    /// Its other tags, `EXTINF` last.
    tags: Vec<String>,
    /// Seconds, from `EXTINF`.
    duration: f64,
    uri: String,
}

/// A media playlist's segments and the header values the DVR needs of it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Playlist {
    version: u32,
    target: u64,
    media_sequence: u64,
    discontinuity_sequence: u64,
    entries: VecDeque<Entry>,
}

impl Playlist {
    /// Reads a media playlist: hlssink3's live one (segments numbered from its
    /// `EXT-X-MEDIA-SEQUENCE`) or a DVR playlist written by [`Playlist::render`].
    fn parse(text: &str) -> Self {
        let mut p = Playlist {
            version: 3,
            ..Playlist::default()
        };
        let mut map = None;
        let mut discontinuity = false;
        let mut tags = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let number = |prefix: &str| line.strip_prefix(prefix).and_then(|v| v.parse().ok());
            if let Some(v) = number("#EXT-X-VERSION:") {
                p.version = v as u32;
            } else if let Some(v) = number("#EXT-X-TARGETDURATION:") {
                p.target = v;
            } else if let Some(v) = number("#EXT-X-MEDIA-SEQUENCE:") {
                p.media_sequence = v;
            } else if let Some(v) = number("#EXT-X-DISCONTINUITY-SEQUENCE:") {
                p.discontinuity_sequence = v;
            } else if line.starts_with("#EXT-X-MAP:") {
                map = Some(line.to_owned());
            } else if line == "#EXT-X-DISCONTINUITY" {
                discontinuity = true;
            } else if line.starts_with("#EXT-X-PROGRAM-DATE-TIME:")
                || line.starts_with("#EXTINF:")
                || line.starts_with("#EXT-X-BYTERANGE:")
            {
                tags.push(line.to_owned());
            } else if !line.starts_with('#') {
                let duration = tags
                    .iter()
                    .find_map(|t| t.strip_prefix("#EXTINF:"))
                    .and_then(|v| v.split(',').next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let sequence = p.media_sequence + p.entries.len() as u64;
                p.entries.push_back(Entry {
                    sequence,
                    discontinuity: std::mem::take(&mut discontinuity),
                    map: map.clone(),
                    tags: std::mem::take(&mut tags),
                    duration,
                    uri: line.to_owned(),
                });
            }
        }
        p
    }

    /// Seconds listed.
    fn length(&self) -> f64 {
        self.entries.iter().map(|e| e.duration).sum()
    }

    /// Appends the segments of `live` (hlssink3's playlist of the program started with
    /// continuity `c`) that come after the last one listed, numbered on from it. An empty
    /// DVR starts at the live numbering; a segment of another program than the last one, or
    /// one that does not follow it, comes after a discontinuity.
    fn merge(&mut self, live: &Playlist, c: &Continuity) {
        let fresh = match self.entries.back() {
            Some(last) => match live.entries.iter().position(|e| e.uri == last.uri) {
                Some(at) => at + 1,
                None => 0,
            },
            None => 0,
        };
        for entry in live.entries.iter().skip(fresh) {
            let (sequence, discontinuity) = match self.entries.back() {
                Some(last) => (last.sequence + 1, !follows(&last.uri, &entry.uri)),
                None => {
                    self.media_sequence = entry.sequence + c.sequence_base;
                    // A break before this program's first segment is counted, not marked.
                    self.discontinuity_sequence = c.discontinuities;
                    (self.media_sequence, false)
                }
            };
            self.target = self.target.max(live.target);
            self.version = self.version.max(live.version);
            self.entries.push_back(Entry {
                sequence,
                discontinuity,
                ..entry.clone()
            });
        }
    }

    /// Drops the oldest segments while the rest still cover `window`. Returns them.
    fn trim(&mut self, window: Duration) -> Vec<Entry> {
        let window = window.as_secs_f64();
        let mut length = self.length();
        let mut dropped = Vec::new();
        while let Some(front) = self.entries.front() {
            if length - front.duration < window {
                break;
            }
            length -= front.duration;
            let front = self.entries.pop_front().expect("a front entry");
            self.media_sequence = front.sequence + 1;
            // A break that leaves the window is counted; one on the new first entry stays.
            if self.entries.front().is_some_and(|e| e.discontinuity) {
                self.discontinuity_sequence += 1;
                if let Some(next) = self.entries.front_mut() {
                    next.discontinuity = false;
                }
            }
            dropped.push(front);
        }
        dropped
    }

    /// The playlist's text: a sliding window (no `EXT-X-PLAYLIST-TYPE`), each segment dated.
    fn render(&self) -> String {
        let target = self
            .entries
            .iter()
            .map(|e| e.duration.round() as u64)
            .max()
            .unwrap_or(0)
            .max(self.target);
        let mut out = format!(
            "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-TARGETDURATION:{target}\n\
             #EXT-X-MEDIA-SEQUENCE:{}\n#EXT-X-DISCONTINUITY-SEQUENCE:{}\n",
            self.version, self.media_sequence, self.discontinuity_sequence
        );
        let mut map: Option<&String> = None;
        for e in &self.entries {
            if e.discontinuity {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if e.map.is_some() && (e.map.as_ref() != map || e.discontinuity) {
                map = e.map.as_ref();
                out.push_str(e.map.as_deref().unwrap_or_default());
                out.push('\n');
            }
            for tag in &e.tags {
                out.push_str(tag);
                out.push('\n');
            }
            out.push_str(&e.uri);
            out.push('\n');
        }
        out
    }

    /// The files it refers to: segments and `EXT-X-MAP` init segments.
    fn files(&self) -> impl Iterator<Item = String> + '_ {
        self.entries
            .iter()
            .flat_map(|e| std::iter::once(e.uri.clone()).chain(e.map.as_deref().and_then(map_uri)))
    }
}

/// Whether segment `next` comes right after `previous` in one program: their names
/// (`segment<base>-<n>.<ext>`, see [`super::encode`]) share the base and count on by one.
fn follows(previous: &str, next: &str) -> bool {
    let parts = |uri: &str| -> Option<(String, u64)> {
        let stem = uri.rsplit_once('.')?.0;
        let (base, n) = stem.rsplit_once('-')?;
        Some((base.to_owned(), n.parse().ok()?))
    };
    match (parts(previous), parts(next)) {
        (Some((a, m)), Some((b, n))) => a == b && n == m + 1,
        _ => false,
    }
}

/// The URI of an `EXT-X-MAP` line.
fn map_uri(line: &str) -> Option<String> {
    let rest = line.split_once("URI=\"")?.1;
    Some(rest.split_once('"')?.0.to_owned())
}

/// Brings rendition directory `dir`'s DVR playlist up to date with its live playlist (of the
/// program started with continuity `c`), drops what is older than `window`, and deletes the
/// files no longer listed by either.
pub fn update(dir: &Path, c: &Continuity, window: Duration) -> std::io::Result<()> {
    let read = |name| std::fs::read_to_string(dir.join(name));
    let live = Playlist::parse(&read("index.m3u8")?);
    let mut dvr = read(FILE)
        .map(|text| Playlist::parse(&text))
        .unwrap_or_default();
    let before = dvr.clone();
    dvr.merge(&live, c);
    let gone = dvr.trim(window);
    if dvr == before {
        return Ok(());
    }
    super::program::write_atomic(&dir.join(FILE), &dvr.render())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let kept: Vec<String> = dvr.files().chain(live.files()).collect();
    let dropped = Playlist {
        entries: gone.into(),
        ..Playlist::default()
    };
    for file in dropped.files().filter(|f| !kept.contains(f)) {
        remove_plain(dir, &file);
    }
    Ok(())
}

/// Readies a relay's HLS directory `hls_dir` for a new program with a DVR: the tail of the
/// last program is added to each rendition's DVR playlist (its live playlist, numbered with
/// continuity `previous`), and everything but the DVR playlists, the segments they list,
/// the score changes and renditions in `keep` is deleted.
pub fn prepare(hls_dir: &Path, previous: &Continuity, keep: &[&str], window: Duration) {
    let Ok(entries) = std::fs::read_dir(hls_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() {
            if name != super::daterange::FILE {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        let _ = update(&path, previous, window);
        let listed: Vec<String> = std::fs::read_to_string(path.join(FILE))
            .map(|text| Playlist::parse(&text).files().collect())
            .unwrap_or_default();
        for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let file = file.file_name().to_string_lossy().into_owned();
            if file != FILE && !listed.contains(&file) {
                remove_plain(&path, &file);
            }
        }
    }
}

/// Deletes `name` in `dir` if it is a plain file name (never a path out of it).
fn remove_plain(dir: &Path, name: &str) {
    if !name.is_empty() && !name.contains('/') && !name.starts_with('.') {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hlssink3's live playlist of the program with base 0: segments `first..first + count`
    /// of 2 s.
    fn live(first: u64, count: u64, map: Option<&str>) -> String {
        program_live(0, first, count, map)
    }

    /// hlssink3's live playlist of the program with base `base`.
    fn program_live(base: u64, first: u64, count: u64, map: Option<&str>) -> String {
        let mut text = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:{first}\n"
        );
        if let Some(map) = map {
            text.push_str(&format!("#EXT-X-MAP:URI=\"{map}\"\n"));
        }
        for n in first..first + count {
            text.push_str(&format!(
                "#EXT-X-PROGRAM-DATE-TIME:2026-11-24T20:00:{:02}.000Z\n#EXTINF:2,\nsegment{base}-{n:05}.ts\n",
                n % 60
            ));
        }
        text
    }

    fn uris(p: &Playlist) -> Vec<&str> {
        p.entries.iter().map(|e| e.uri.as_str()).collect()
    }

    #[test]
    fn it_grows_past_the_live_window_and_drops_what_leaves_its_own() {
        let c = Continuity::default();
        let mut dvr = Playlist::default();
        dvr.merge(&Playlist::parse(&live(0, 6, None)), &c);
        dvr.merge(&Playlist::parse(&live(4, 6, None)), &c);
        assert_eq!(dvr.entries.len(), 10);
        assert_eq!(dvr.media_sequence, 0);
        // A 12 s window keeps the last six 2 s segments.
        let gone = dvr.trim(Duration::from_secs(12));
        assert_eq!(gone.len(), 4);
        assert_eq!(dvr.media_sequence, 4);
        assert_eq!(uris(&dvr)[0], "segment0-00004.ts");
        // Written and read back, it is the same playlist.
        let text = dvr.render();
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:4\n"), "{text}");
        assert_eq!(Playlist::parse(&text), dvr);
    }

    #[test]
    fn a_new_program_carries_on_after_a_discontinuity() {
        let first = Continuity::default();
        let mut dvr = Playlist::default();
        dvr.merge(&Playlist::parse(&live(0, 5, None)), &first);
        // The next program numbers from 0 again; the five before it are its base.
        let next = Continuity {
            sequence_base: 5,
            discontinuities: 1,
        };
        dvr.merge(&Playlist::parse(&program_live(5, 0, 3, None)), &next);
        let text = dvr.render();
        let sequences: Vec<u64> = dvr.entries.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert!(dvr.entries[5].discontinuity);
        // Once the break leaves the window, it is counted instead.
        dvr.trim(Duration::from_secs(4));
        assert_eq!(dvr.discontinuity_sequence, 1);
        assert!(!dvr.render().contains("#EXT-X-DISCONTINUITY\n"));
    }

    #[test]
    fn missing_segments_are_a_discontinuity_and_the_numbering_goes_on() {
        let c = Continuity::default();
        let mut dvr = Playlist::default();
        dvr.merge(&Playlist::parse(&live(0, 3, None)), &c);
        dvr.merge(&Playlist::parse(&live(5, 2, None)), &c);
        let sequences: Vec<u64> = dvr.entries.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [0, 1, 2, 3, 4]);
        assert!(dvr.entries[3].discontinuity && !dvr.entries[4].discontinuity);
        assert_eq!(uris(&dvr)[3], "segment0-00005.ts");
    }

    #[test]
    fn init_segments_are_listed_again_after_a_break() {
        let mut dvr = Playlist::default();
        dvr.merge(
            &Playlist::parse(&live(0, 2, Some("init0.mp4"))),
            &Continuity::default(),
        );
        let next = Continuity {
            sequence_base: 2,
            discontinuities: 1,
        };
        dvr.merge(
            &Playlist::parse(&program_live(2, 0, 2, Some("init2.mp4"))),
            &next,
        );
        let text = dvr.render();
        assert_eq!(text.matches("#EXT-X-MAP:").count(), 2, "{text}");
        let files: Vec<String> = dvr.files().collect();
        assert!(files.contains(&"init0.mp4".to_owned()));
        assert!(files.contains(&"init2.mp4".to_owned()));
    }

    #[test]
    fn update_deletes_the_segments_that_left_the_window_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for n in 0..10 {
            std::fs::write(dir.path().join(format!("segment0-{n:05}.ts")), b"ts").unwrap();
        }
        let c = Continuity::default();
        std::fs::write(dir.path().join("index.m3u8"), live(0, 6, None)).unwrap();
        update(dir.path(), &c, Duration::from_secs(12)).unwrap();
        std::fs::write(dir.path().join("index.m3u8"), live(4, 6, None)).unwrap();
        update(dir.path(), &c, Duration::from_secs(12)).unwrap();
        let exists = |n: u64| dir.path().join(format!("segment0-{n:05}.ts")).exists();
        assert!(!exists(0) && !exists(3));
        assert!(exists(4) && exists(9));
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(Playlist::parse(&text).entries.len(), 6);
    }

    #[test]
    fn prepare_keeps_the_dvr_and_its_segments_and_nothing_else() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let dir = root.path().join("720p");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(root.path().join("480p")).unwrap();
        for n in 0..4 {
            std::fs::write(dir.join(format!("segment0-{n:05}.ts")), b"ts").unwrap();
        }
        std::fs::write(dir.join("segment0-00009.ts"), b"not listed").unwrap();
        std::fs::write(dir.join("index.m3u8"), live(0, 4, None)).unwrap();
        std::fs::write(root.path().join("master.m3u8"), "#EXTM3U\n").unwrap();
        std::fs::write(root.path().join(super::super::daterange::FILE), "").unwrap();
        prepare(
            root.path(),
            &Continuity::default(),
            &["720p"],
            Duration::from_secs(60),
        );
        // The last program's tail is in the DVR, its live playlist is gone.
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert_eq!(Playlist::parse(&text).entries.len(), 4);
        assert!(dir.join("segment0-00003.ts").exists());
        assert!(!dir.join("segment0-00009.ts").exists());
        assert!(!dir.join("index.m3u8").exists());
        assert!(!root.path().join("master.m3u8").exists());
        assert!(!root.path().join("480p").exists());
        assert!(root.path().join(super::super::daterange::FILE).exists());
    }
}
