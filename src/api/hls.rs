//! HLS file serving: `/hls/{relay}/master.m3u8`, media playlists and segments, from the data
//! dir, with their MIME types, caching rules and CORS.
//!
//! Owns path checking: only plain names, at most three deep, so no request reaches outside the
//! HLS directory. Media playlists are served with the numbering that carries on from the
//! relay's earlier programs (see [`continuity`]).

use std::path::{Path, PathBuf};

use warp::http::{header, Response, StatusCode};
use warp::hyper::body::Bytes;

use super::error::ApiError;
use crate::pipeline::{continuity, daterange, dvr};

/// Path segments allowed below `/hls/`: `{relay}/master.m3u8`, `{relay}/{rendition}/{file}`.
const MAX_DEPTH: usize = 3;

/// The MIME type and Cache-Control of an HLS file, by extension.
fn kind(name: &str) -> Option<(&'static str, &'static str)> {
    let ext = Path::new(name).extension()?.to_str()?;
    match ext {
        "m3u8" => Some(("application/vnd.apple.mpegurl", "no-cache")),
        "ts" => Some(("video/mp2t", "max-age=60")),
        "m4s" => Some(("video/iso.segment", "max-age=60")),
        "mp4" => Some(("video/mp4", "max-age=60")),
        _ => None,
    }
}

/// Resolves a request tail to a file under `root`, refusing anything but plain names.
pub fn resolve(root: &Path, tail: &str) -> Option<PathBuf> {
    let parts: Vec<&str> = tail.split('/').collect();
    if parts.is_empty() || parts.len() > MAX_DEPTH {
        return None;
    }
    let plain = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !parts.iter().all(plain) {
        return None;
    }
    let mut path = root.to_path_buf();
    path.extend(parts);
    Some(path)
}

pub async fn serve(root: PathBuf, tail: String) -> Result<warp::reply::Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no HLS file /hls/{tail}"),
        )
    };
    let path = resolve(&root, &tail).ok_or_else(not_found)?;
    let (mime, cache) = kind(&tail).ok_or_else(not_found)?;
    let mut data = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    // Media playlists (live and DVR, one level below the relay's directory) carry the score
    // changes; live ones continue the numbering of the relay's earlier programs (DVR ones
    // are written numbered).
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let media = tail.split('/').count() == MAX_DEPTH;
    if media && (name == "index.m3u8" || name == dvr::FILE) {
        let relay_dir = path.parent().and_then(Path::parent);
        if let Some(c) = relay_dir
            .and_then(continuity::load)
            .filter(|_| name == "index.m3u8")
        {
            data = continuity::rewrite(&String::from_utf8_lossy(&data), &c).into_bytes();
        }
        // Score changes within the window, as EXT-X-DATERANGE tags.
        let scores = relay_dir.map(|d| d.join(daterange::FILE));
        if let Some(Ok(scores)) = scores.map(std::fs::read_to_string) {
            data = daterange::inject(&String::from_utf8_lossy(&data), &scores).into_bytes();
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, mime)
        .header(header::CACHE_CONTROL, cache)
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(Bytes::from(data).into())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_resolve() {
        let root = Path::new("/data/hls");
        assert_eq!(
            resolve(root, "final/720p/index.m3u8"),
            Some(PathBuf::from("/data/hls/final/720p/index.m3u8"))
        );
        for bad in [
            "../etc/passwd",
            "final/../../x.ts",
            "final/.hidden.ts",
            "",
            "a//b.ts",
            "a/b/c/d.ts",
            "a/b%2f.ts",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }

    #[test]
    fn mime_types() {
        assert_eq!(
            kind("master.m3u8").map(|k| k.0),
            Some("application/vnd.apple.mpegurl")
        );
        assert_eq!(kind("segment00001.ts").map(|k| k.0), Some("video/mp2t"));
        assert_eq!(kind("index.html"), None);
    }
}
