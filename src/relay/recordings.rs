//! A relay's recordings on disk, `<data_dir>/recordings/<relay>/<unix ms>.mp4`: listing them
//! and deciding which to delete (retention, disk budget).
//!
//! Owns those rules and each recording's score markers (`<rid>.markers.jsonl`: one line per
//! scoreboard change while it was written). The decision ([`to_delete`]) is pure; [`list`]
//! and [`sweep`] read and delete files. The file being written is never deleted. The recording itself is
//! [`crate::pipeline::record`]'s.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::scores::Scoreboard;

/// What a relay's `record` asks for, with the config's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub retention: Duration,
    pub split: Duration,
    pub max_bytes: Option<u64>,
}

/// One recorded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub path: PathBuf,
    /// Its id: the file's stem, the Unix time in milliseconds it was opened.
    pub id: String,
    pub started: SystemTime,
    /// When it was last written to.
    pub modified: SystemTime,
    pub bytes: u64,
}

/// The recordings in `dir`, oldest first. Files not named `<digits>.mp4` are left out.
pub fn list(dir: &Path) -> Vec<FileInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<FileInfo> = entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let id = path.file_name()?.to_str()?.strip_suffix(".mp4")?.to_owned();
            let ms: u64 = id.parse().ok()?;
            let meta = entry.metadata().ok()?;
            Some(FileInfo {
                started: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
                modified: meta.modified().ok()?,
                bytes: meta.len(),
                id,
                path,
            })
        })
        .collect();
    files.sort_by_key(|f| f.started);
    files
}

/// The recording `id` in `dir`, if `id` is one (digits only: no path can be made of it).
pub fn find(dir: &Path, id: &str) -> Option<FileInfo> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    list(dir).into_iter().find(|f| f.id == id)
}

/// The score markers of the recording at `recording`: `<rid>.markers.jsonl` beside it.
pub fn markers_path(recording: &Path) -> PathBuf {
    recording.with_extension("markers.jsonl")
}

/// Notes that the scoreboard became `board` at `at` during the recording at `recording`.
pub fn append_marker(recording: &Path, at: SystemTime, board: &Scoreboard) -> std::io::Result<()> {
    let at = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = serde_json::to_vec(&serde_json::json!({ "at": at, "scoreboard": board }))
        .expect("a scoreboard always serializes");
    line.push(b'\n');
    append(&markers_path(recording), &line)
}

/// Appends `bytes` (whole lines) to the file at `path`, creating it. The score notes of
/// recordings and of the HLS playlists are written this way.
pub fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(bytes)
}

/// The markers of the recording at `recording`, oldest first (lines that do not parse, such
/// as one cut short by a crash, are left out).
pub fn markers(recording: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(markers_path(recording))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Deletes a recording and its markers.
pub fn remove(recording: &Path) -> std::io::Result<()> {
    std::fs::remove_file(recording)?;
    let _ = std::fs::remove_file(markers_path(recording));
    Ok(())
}

/// Which of `files` (oldest first) go at `now`: those that ended more than the retention ago,
/// then the oldest until the rest fit the budget. `open`, the file being written, never goes.
pub fn to_delete(
    files: &[FileInfo],
    rules: &Rules,
    now: SystemTime,
    open: Option<&Path>,
) -> Vec<PathBuf> {
    let closed = |f: &&FileInfo| Some(f.path.as_path()) != open;
    let mut gone: Vec<PathBuf> = files
        .iter()
        .filter(closed)
        .filter(|f| {
            now.duration_since(f.modified)
                .is_ok_and(|age| age > rules.retention)
        })
        .map(|f| f.path.clone())
        .collect();
    if let Some(budget) = rules.max_bytes {
        let mut total: u64 = files
            .iter()
            .filter(|f| !gone.contains(&f.path))
            .map(|f| f.bytes)
            .sum();
        for f in files.iter().filter(closed) {
            if total <= budget {
                break;
            }
            if !gone.contains(&f.path) {
                total -= f.bytes;
                gone.push(f.path.clone());
            }
        }
    }
    gone
}

/// Deletes what [`to_delete`] says in `dir`; returns how many files went.
pub fn sweep(dir: &Path, rules: &Rules, open: Option<&Path>) -> Vec<PathBuf> {
    let files = list(dir);
    let gone = to_delete(&files, rules, SystemTime::now(), open);
    gone.into_iter()
        .filter(|path| remove(path).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64, ended_secs: u64, bytes: u64) -> FileInfo {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        FileInfo {
            path: PathBuf::from(format!("/r/{n}.mp4")),
            id: n.to_string(),
            started: t(n),
            modified: t(ended_secs),
            bytes,
        }
    }

    fn rules(retention: u64, max_bytes: Option<u64>) -> Rules {
        Rules {
            retention: Duration::from_secs(retention),
            split: Duration::from_secs(3600),
            max_bytes,
        }
    }

    #[test]
    fn files_past_retention_go_but_never_the_open_one() {
        let files = [file(100, 200, 10), file(200, 300, 10), file(300, 310, 10)];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(400);
        let names = |v: Vec<PathBuf>| {
            v.into_iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(to_delete(&files, &rules(150, None), now, None)),
            ["/r/100.mp4"]
        );
        // Everything is old, but the open file stays.
        let open = PathBuf::from("/r/300.mp4");
        assert_eq!(
            names(to_delete(&files, &rules(10, None), now, Some(&open))),
            ["/r/100.mp4", "/r/200.mp4"]
        );
    }

    #[test]
    fn the_budget_deletes_the_oldest_first_and_spares_the_open_one() {
        let files = [file(100, 110, 40), file(200, 210, 40), file(300, 310, 40)];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(400);
        let open = PathBuf::from("/r/300.mp4");
        let gone = to_delete(&files, &rules(3600, Some(50)), now, Some(&open));
        assert_eq!(
            gone,
            [PathBuf::from("/r/100.mp4"), PathBuf::from("/r/200.mp4")]
        );
        // A budget smaller than the open file alone: still only the closed ones go.
        let gone = to_delete(&files, &rules(3600, Some(10)), now, Some(&open));
        assert_eq!(gone.len(), 2);
        assert!(to_delete(&files, &rules(3600, Some(120)), now, None).is_empty());
    }

    #[test]
    fn only_recording_names_are_found() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("1700000000000.mp4"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.join("..mp4"), b"x").unwrap();
        let found = list(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "1700000000000");
        assert!(find(&dir, "1700000000000").is_some());
        assert!(find(&dir, "../1700000000000").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scorecast-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
