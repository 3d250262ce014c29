//! A scores API stand-in on 127.0.0.1: `GET /match` answers whatever the test sets, and
//! `GET /files/<name>` serves the bytes the test put there (whatever the query string).
//! It counts the requests for each path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::Filter;

#[derive(Clone)]
pub enum Answer {
    Score(String),
    /// A body made for each request from its number (0, 1, …).
    Each(Arc<dyn Fn(u64) -> String + Send + Sync>),
    Error500,
    Garbage,
    Hang,
}

#[derive(Default)]
struct Shared {
    answer: Option<Answer>,
    files: HashMap<String, Vec<u8>>,
    hits: HashMap<String, u64>,
}

pub struct ScoresApi {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl ScoresApi {
    pub async fn start(answer: Answer) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            answer: Some(answer),
            ..Shared::default()
        }));
        let for_match = shared.clone();
        let scores = warp::path!("match").and(warp::get()).then(move || {
            let answer = {
                let mut s = for_match.lock().expect("scores lock");
                let n = s.hits.get("match").copied().unwrap_or(0);
                *s.hits.entry("match".to_owned()).or_default() += 1;
                match s.answer.clone().expect("an answer") {
                    Answer::Each(make) => Answer::Score(make(n)),
                    other => other,
                }
            };
            async move {
                use warp::http::StatusCode;
                use warp::Reply;
                match answer {
                    Answer::Score(json) => {
                        warp::reply::with_header(json, "content-type", "application/json")
                            .into_response()
                    }
                    Answer::Error500 => {
                        warp::reply::with_status("boom", StatusCode::INTERNAL_SERVER_ERROR)
                            .into_response()
                    }
                    Answer::Garbage => {
                        warp::reply::html("<html>maintenance</html>").into_response()
                    }
                    Answer::Each(_) => unreachable!("made into a score above"),
                    Answer::Hang => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        "too late".into_response()
                    }
                }
            }
        });
        let for_files = shared.clone();
        let files = warp::path!("files" / String)
            .and(warp::get())
            .map(move |name: String| {
                use warp::Reply;
                let mut s = for_files.lock().expect("scores lock");
                *s.hits.entry(format!("files/{name}")).or_default() += 1;
                match s.files.get(&name) {
                    Some(bytes) => {
                        warp::reply::with_header(bytes.clone(), "content-type", "image/png")
                            .into_response()
                    }
                    None => warp::http::StatusCode::NOT_FOUND.into_response(),
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(warp::serve(scores.or(files)).incoming(listener).run());
        Self { addr, shared }
    }

    /// What `GET /match` answers from now on.
    pub fn set(&self, answer: Answer) {
        self.shared.lock().expect("scores lock").answer = Some(answer);
    }

    /// Serves `bytes` at `/files/<name>`.
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) {
        self.shared
            .lock()
            .expect("scores lock")
            .files
            .insert(name.to_owned(), bytes);
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Requests so far for `match` or `files/<name>`.
    pub fn hits(&self, path: &str) -> u64 {
        let s = self.shared.lock().expect("scores lock");
        s.hits.get(path).copied().unwrap_or(0)
    }
}

/// A PNG of one colour, `width` by `height`: a logo to serve.
pub fn solid_png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    use image::ImageEncoder;
    let pixels: Vec<u8> = (0..width * height).flat_map(|_| rgba).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgba8)
        .expect("encodes");
    out
}
