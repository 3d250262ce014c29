//! The operator console: one static page (`GET /`) and its files (`GET /console/{file}`),
//! built into the binary from `console/`, so nothing is fetched from elsewhere at run time.
//!
//! Owns the files and how they are answered: MIME type, caching (`no-cache` with an ETag, so
//! a new build is picked up at once) and a Content-Security-Policy that lets the page talk to
//! this server only. The page holds no data and so needs no token; everything it shows it
//! asks the API for, with the operator's token. This module must not serve anything else.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use warp::http::{header, Response, StatusCode};
use warp::hyper::body::Bytes;

use super::error::ApiError;

/// What the page may load: its own files, the API, and the blob: URLs hls.js makes for its
/// worker and for the video's MediaSource.
const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   media-src 'self' blob:; worker-src 'self' blob:; connect-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// One file of the console.
struct Asset {
    /// Its name under `/console/`.
    name: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 5] = [
    Asset {
        name: "index.html",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../console/index.html"),
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/app.js"),
    },
    Asset {
        name: "style.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../console/style.css"),
    },
    Asset {
        name: "hls.min.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/vendor/hls.min.js"),
    },
    Asset {
        name: "hls.js-LICENSE",
        mime: "text/plain; charset=utf-8",
        bytes: include_bytes!("../../console/vendor/hls.js-LICENSE"),
    },
];

/// Each file's ETag, computed once: a hash of its bytes, so it changes with the build.
fn etags() -> &'static [String; ASSETS.len()] {
    static ETAGS: OnceLock<[String; ASSETS.len()]> = OnceLock::new();
    ETAGS.get_or_init(|| {
        std::array::from_fn(|i| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            ASSETS[i].bytes.hash(&mut hasher);
            format!("\"{:016x}\"", hasher.finish())
        })
    })
}

/// `GET /`: the console page.
pub fn index(if_none_match: Option<String>) -> Result<warp::reply::Response, ApiError> {
    reply(0, if_none_match.as_deref())
}

/// `GET /console/{file}`.
pub fn file(name: &str, if_none_match: Option<String>) -> Result<warp::reply::Response, ApiError> {
    let index = ASSETS.iter().position(|a| a.name == name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no console file /console/{name}"),
        )
    })?;
    reply(index, if_none_match.as_deref())
}

fn reply(index: usize, if_none_match: Option<&str>) -> Result<warp::reply::Response, ApiError> {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = if_none_match.is_some_and(|given| {
        given
            .split(',')
            .any(|tag| tag.trim() == etag || tag.trim() == "*")
    });
    let builder = Response::builder()
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::ETAG, etag.as_str())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::REFERRER_POLICY, "no-referrer");
    let response = if fresh {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Bytes::new().into())
    } else {
        builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, asset.mime)
            .body(Bytes::from_static(asset.bytes).into())
    };
    response
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_their_types_and_revalidate() {
        let page = index(None).expect("the page");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = page.headers()[header::ETAG]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(
            index(Some(etag.clone())).expect("page").status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            index(Some("\"other\"".to_owned())).expect("page").status(),
            StatusCode::OK
        );
        let hls = file("hls.min.js", Some(etag)).expect("hls.js");
        assert_eq!(hls.status(), StatusCode::OK, "each file has its own ETag");
        assert_eq!(
            hls.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let missing = file("nope.js", None).err().map(|e| e.status);
        assert_eq!(missing, Some(StatusCode::NOT_FOUND));
        assert!(file("../Cargo.toml", None).is_err());
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let own = ["index.html", "app.js", "style.css"];
        for asset in ASSETS.iter().filter(|a| own.contains(&a.name)) {
            let text = std::str::from_utf8(asset.bytes).expect("text");
            assert!(
                !text.contains("//cdn") && !text.contains("https://") && !text.contains("http://"),
                "{} names another server",
                asset.name
            );
        }
        let page = std::str::from_utf8(ASSETS[0].bytes).expect("html");
        for name in [
            "/console/app.js",
            "/console/style.css",
            "/console/hls.min.js",
        ] {
            assert!(page.contains(name), "index.html does not load {name}");
        }
    }
}
