//! Score changes in the HLS playlists: each one an `#EXT-X-DATERANGE` (RFC 8216 4.3.2.7) of
//! class `com.scorecast.score`, so players and sites can sync a scoreboard to the picture.
//!
//! The relay appends each change to `<hls_dir>/scores.daterange`, one line per change: the
//! change's `START-DATE`, a tab, and the whole tag. Serving a media playlist, the API puts in
//! the tags whose date is within the playlist's window (from its first
//! `EXT-X-PROGRAM-DATE-TIME` on), before its first segment. Pure text work, no I/O here.

use std::time::SystemTime;

use crate::scores::Scoreboard;

/// The file beside a relay's renditions that holds its score changes.
pub const FILE: &str = "scores.daterange";
/// The tags' CLASS.
pub const CLASS: &str = "com.scorecast.score";

/// `t` as HLS dates it: `2026-11-24T19:41:25.642Z` (UTC, milliseconds).
pub fn utc(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// A quoted-string attribute value: no `"`, no line breaks (RFC 8216 4.2).
fn quoted(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c == '"' { '\'' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    format!("\"{clean}\"")
}

/// The line [`FILE`] holds for `board` becoming the scoreboard at `at`.
pub fn line(at: SystemTime, board: &Scoreboard) -> String {
    let start = utc(at);
    let id = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut tag = format!(
        "#EXT-X-DATERANGE:ID=\"score-{id}\",CLASS=\"{CLASS}\",START-DATE=\"{start}\",\
         X-HOME-NAME={},X-HOME-SCORE={},X-AWAY-NAME={},X-AWAY-SCORE={}",
        quoted(&board.home.name),
        quoted(&board.home.score),
        quoted(&board.away.name),
        quoted(&board.away.score),
    );
    for (name, value) in [
        ("X-PERIOD", &board.period),
        ("X-CLOCK", &board.clock),
        ("X-STATUS", &board.status),
    ] {
        if let Some(value) = value {
            tag.push_str(&format!(",{name}={}", quoted(value)));
        }
    }
    format!("{start}\t{tag}\n")
}

/// `playlist` with the tags of `file` (the text of [`FILE`]) dated within its window, before
/// its first segment. A playlist without a program date-time is left as it is (the tags
/// would break RFC 8216 there).
pub fn inject(playlist: &str, file: &str) -> String {
    let Some(first_date) = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"))
    else {
        return playlist.to_owned();
    };
    // Same fixed format on both sides: the dates compare as text.
    let tags: Vec<&str> = file
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(start, _)| *start >= first_date)
        .map(|(_, tag)| tag)
        .collect();
    if tags.is_empty() {
        return playlist.to_owned();
    }
    let mut out =
        String::with_capacity(playlist.len() + tags.iter().map(|t| t.len() + 1).sum::<usize>());
    let mut placed = false;
    for l in playlist.lines() {
        let segment_starts = l.starts_with("#EXT-X-PROGRAM-DATE-TIME:")
            || l.starts_with("#EXTINF:")
            || l.starts_with("#EXT-X-DISCONTINUITY");
        if !placed && segment_starts {
            for tag in &tags {
                out.push_str(tag);
                out.push('\n');
            }
            placed = true;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scores::Team;

    fn board(home: &str) -> Scoreboard {
        Scoreboard {
            home: Team {
                name: "NA\"VI".to_owned(),
                score: home.to_owned(),
                logo: None,
                color: None,
            },
            away: Team {
                name: "G2".to_owned(),
                score: "0".to_owned(),
                logo: None,
                color: None,
            },
            period: Some("Map 1".to_owned()),
            clock: None,
            status: None,
        }
    }

    #[test]
    fn dates_are_utc_with_milliseconds() {
        let t = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(utc(t(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(t(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(t(1_795_549_426_113)), "2026-11-24T19:43:46.113Z");
    }

    #[test]
    fn changes_in_the_window_go_before_the_first_segment() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_549_400 + s);
        let file = [line(at(0), &board("1")), line(at(30), &board("2"))].concat();
        let playlist = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:4,\nsegment00007.ts\n",
            utc(at(20))
        );
        let served = inject(&playlist, &file);
        let tags: Vec<&str> = served
            .lines()
            .filter(|l| l.starts_with("#EXT-X-DATERANGE:"))
            .collect();
        // The change before the window is left out.
        assert_eq!(tags.len(), 1, "{served}");
        assert!(
            tags[0].contains("CLASS=\"com.scorecast.score\""),
            "{served}"
        );
        assert!(tags[0].contains("X-HOME-SCORE=\"2\""), "{served}");
        assert!(
            tags[0].contains("X-HOME-NAME=\"NA'VI\""),
            "quotes replaced: {served}"
        );
        assert!(tags[0].contains(&format!("START-DATE=\"{}\"", utc(at(30)))));
        let before = served.find("#EXT-X-DATERANGE").unwrap();
        assert!(before < served.find("#EXT-X-PROGRAM-DATE-TIME").unwrap());
        // No date-time, no tags.
        assert_eq!(inject("#EXTM3U\n", &file), "#EXTM3U\n");
    }
}
