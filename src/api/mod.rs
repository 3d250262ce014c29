//! The HTTP API (warp): routes here, handlers in [`handlers`], JSON shapes in [`wire`], every
//! error mapped in [`error`], HLS files in [`hls`], the Prometheus text in [`metrics`], the
//! operator console's page and files in [`console`], the listener and its connection caps in
//! [`server`]. Before any route, [`browsers`] refuses
//! what a hostile web page could send (foreign Origin or Host, a body that is not JSON), and
//! [`auth`] checks the token.
//!
//! Owns HTTP only. It talks to relays through the registry and their handles and must not
//! touch pipelines.

pub mod auth;
pub mod browsers;
pub mod console;
pub mod error;
pub mod handlers;
pub mod hls;
pub mod metrics;
pub mod queue;
pub mod recordings;
pub mod server;
pub mod tls;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::compat::CompatSettings;
use crate::relay::registry::Registry;
use crate::relay::QueueOp;
use crate::secrets::Sight;
use auth::Auth;
use browsers::Browsers;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Turns a handler's `Result` into a response, whichever error type it maps to.
async fn finish<E: Reply>(result: Result<Response, E>) -> Result<Response, Infallible> {
    Ok(result.unwrap_or_else(Reply::into_response))
}

/// The request body, read up to [`MAX_BODY_BYTES`]: refused early when Content-Length says it
/// is larger, and cut off when a chunked body grows past it.
fn bounded_body() -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(read_bounded)
}

async fn read_bounded<S, B>(length: Option<u64>, stream: S) -> Result<Bytes, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if length.is_some_and(|l| l > MAX_BODY_BYTES) {
        return Err(warp::reject::custom(error::BodyTooLarge));
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::custom(error::BodyUnreadable))?;
        if (body.len() + chunk.remaining()) as u64 > MAX_BODY_BYTES {
            return Err(warp::reject::custom(error::BodyTooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// The API's OpenAPI 3 document, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// One route of the API: the requests it serves, as `openapi.json` names them, and its filter.
pub struct Route {
    pub method: &'static str,
    /// Path templates, e.g. `/api/v1/relays/{id}`: one filter may serve more than one.
    pub paths: &'static [&'static str],
    pub filter: BoxedFilter<(Response,)>,
}

fn route<F>(method: &'static str, paths: &'static [&'static str], filter: F) -> Route
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    Route {
        method,
        paths,
        filter: filter.boxed(),
    }
}

/// Passes a request a browser's page could not have forged; rejects the others with
/// [`browsers::Refused`].
fn from_no_foreign_page(
    browsers: Arc<Browsers>,
    auth: Arc<Auth>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  headers: warp::http::HeaderMap| {
                let authorization = headers
                    .get(warp::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let authenticated = auth.authenticates(authorization);
                let checked = browsers.check(&method, path.as_str(), &headers, authenticated);
                if let Err(refused) = &checked {
                    tracing::info!(
                        %method,
                        path = path.as_str(),
                        host = ?headers.get(warp::http::header::HOST),
                        origin = ?headers.get(warp::http::header::ORIGIN),
                        code = refused.error.code,
                        "request refused: a web page could have sent it"
                    );
                }
                async move { checked.map_err(warp::reject::custom) }
            },
        )
        .untuple_one()
}

/// Passes a request the tokens allow; rejects the others with [`auth::Refused`].
fn authorized(auth: Arc<Auth>) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  header: Option<String>| {
                let checked = auth.check(&method, path.as_str(), header.as_deref());
                async move { checked.map_err(|e| warp::reject::custom(auth::Refused(e))) }
            },
        )
        .untuple_one()
}

/// What the request's token may see of secrets ([`Auth::sight`]).
fn sight(auth: Arc<Auth>) -> impl Filter<Extract = (Sight,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .map(move |header: Option<String>| auth.sight(header.as_deref()))
        .or(warp::any().map(|| Sight::Masked))
        .unify()
}

/// Every route of the API, in the order they are tried. [`routes`] serves these and nothing
/// else (besides the error for an empty id), so `tests/reference.rs` can hold them to
/// `openapi.json`. Every route that answers with a relay, a score or the compatible list
/// shows secrets only to the callers `auth` lets see them.
pub fn table(shared: &Shared) -> Vec<Route> {
    let registry = shared.registry.clone();
    let hls_root = shared.hls_root.clone();
    let with_registry = warp::any().map(move || registry.clone());
    let compat = shared.compat.clone();
    let with_compat = warp::any().map(move || compat.clone());
    let sight = sight(shared.auth.clone());
    let body = bounded_body();

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .then(handlers::healthz)
        .and_then(finish);

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_registry.clone())
        .then(handlers::metrics)
        .and_then(finish);

    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(OPENAPI, "content-type", "application/json").into_response()
        });

    let events = warp::path!("api" / "v1" / "events")
        .and(warp::get())
        .and(warp::sse::last_event_id::<u64>())
        .and(with_registry.clone())
        .then(handlers::events)
        .and_then(finish);

    let relays = warp::path!("api" / "v1" / "relays");
    let list = relays
        .and(warp::get())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(handlers::list_relays)
        .and_then(finish);
    let create = relays
        .and(warp::post())
        .and(sight.clone())
        .and(with_registry.clone())
        .and(body.clone())
        .then(handlers::create_relay)
        .and_then(finish);
    let relay = warp::path!("api" / "v1" / "relays" / String);
    let get = relay
        .and(warp::get())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(handlers::get_relay)
        .and_then(finish);
    let patch = relay
        .and(warp::patch())
        .and(sight.clone())
        .and(with_registry.clone())
        .and(body.clone())
        .then(handlers::patch_relay)
        .and_then(finish);
    let delete = relay
        .and(warp::delete())
        .and(with_registry.clone())
        .then(handlers::delete_relay)
        .and_then(finish);
    let start = warp::path!("api" / "v1" / "relays" / String / "start")
        .and(warp::post())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(handlers::start_relay)
        .and_then(finish);
    let stop = warp::path!("api" / "v1" / "relays" / String / "stop")
        .and(warp::post())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(handlers::stop_relay)
        .and_then(finish);

    let add_output = warp::path!("api" / "v1" / "relays" / String / "outputs")
        .and(warp::post())
        .and(sight.clone())
        .and(with_registry.clone())
        .and(body.clone())
        .then(handlers::add_output)
        .and_then(finish);
    let remove_output = warp::path!("api" / "v1" / "relays" / String / "outputs" / String)
        .and(warp::delete())
        .and(with_registry.clone())
        .then(handlers::remove_output)
        .and_then(finish);

    let thumbnail = warp::path!("api" / "v1" / "relays" / String / "thumbnail.jpg")
        .and(warp::get())
        .and(with_registry.clone())
        .then(handlers::get_thumbnail)
        .and_then(finish);
    let score = warp::path!("api" / "v1" / "relays" / String / "score");
    let get_score = score
        .and(warp::get())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(handlers::get_score)
        .and_then(finish);
    let put_score = score
        .and(warp::put())
        .and(sight.clone())
        .and(with_registry.clone())
        .and(body.clone())
        .then(handlers::put_score)
        .and_then(finish);

    let get_graphics = warp::path!("api" / "v1" / "relays" / String / "graphics")
        .and(warp::get())
        .and(with_registry.clone())
        .then(handlers::get_graphics)
        .and_then(finish);
    let put_layer = warp::path!("api" / "v1" / "relays" / String / "graphics" / String)
        .and(warp::put())
        .and(with_registry.clone())
        .and(body.clone())
        .then(handlers::put_layer)
        .and_then(finish);

    // Once the path and method match, a compatible route answers its body errors in the old
    // service's shape too.
    let start_stream = warp::path!("start_stream").and(warp::post()).and(
        with_compat
            .clone()
            .and(with_registry.clone())
            .and(body.clone())
            .then(handlers::start_stream)
            .and_then(finish)
            .recover(error::recover_compat)
            .unify(),
    );
    let stop_stream = warp::path!("stop_stream").and(warp::post()).and(
        with_compat
            .clone()
            .and(with_registry.clone())
            .and(body.clone())
            .then(handlers::stop_stream)
            .and_then(finish)
            .recover(error::recover_compat)
            .unify(),
    );
    let list_streams = warp::path!("list_streams")
        .and(warp::get())
        .and(sight.clone())
        .and(with_compat.clone())
        .and(with_registry.clone())
        .then(handlers::list_streams)
        .and_then(finish);

    let casters = warp::path!("api" / "v1" / "relays" / String / "casters");
    let list_casters = casters
        .and(warp::get())
        .and(sight.clone())
        .and(with_registry.clone())
        .then(queue::list_casters)
        .and_then(finish);
    let add_caster = casters
        .and(warp::post())
        .and(with_registry.clone())
        .and(body.clone())
        .then(queue::add_caster)
        .and_then(finish);
    let delete_caster = warp::path!("api" / "v1" / "relays" / String / "casters" / String)
        .and(warp::delete())
        .and(with_registry.clone())
        .then(queue::delete_caster)
        .and_then(finish);
    let get_queue = warp::path!("api" / "v1" / "relays" / String / "queue")
        .and(warp::get())
        .and(with_registry.clone())
        .then(queue::get_queue)
        .and_then(finish);
    let skip = warp::path!("api" / "v1" / "relays" / String / "queue" / "skip")
        .and(warp::post())
        .and(with_registry.clone())
        .then(|id, registry| queue::operate(id, QueueOp::Skip, registry))
        .and_then(finish);
    let order = warp::path!("api" / "v1" / "relays" / String / "queue" / "order")
        .and(warp::put())
        .and(with_registry.clone())
        .and(body.clone())
        .then(queue::put_order)
        .and_then(finish);
    let timer = warp::path!("api" / "v1" / "relays" / String / "queue" / "timer")
        .and(warp::post())
        .and(with_registry.clone())
        .and(body.clone())
        .then(queue::post_timer)
        .and_then(finish);
    let block = warp::path!("api" / "v1" / "relays" / String / "queue" / "block")
        .and(warp::post())
        .and(with_registry.clone())
        .and(body.clone())
        .then(queue::post_block)
        .and_then(finish);
    let kick = warp::path!("api" / "v1" / "relays" / String / "queue" / String)
        .and_then(|id: String, name: String| async move {
            // .../queue/skip, order, timer and block are routes of their own, not casters.
            if queue::RESERVED_NAMES.contains(&name.as_str()) {
                Err(warp::reject::not_found())
            } else {
                Ok((id, name))
            }
        })
        .untuple_one()
        .and(warp::delete())
        .and(with_registry.clone())
        .then(|id, name, registry| queue::operate(id, QueueOp::Kick(name), registry))
        .and_then(finish);
    let seed_json = warp::path!("queue-json")
        .and(warp::get())
        .and(with_compat.clone())
        .and(with_registry.clone())
        .then(queue::seed_json)
        .and_then(finish);
    let seed_list = warp::path!("queue-list")
        .and(warp::get())
        .and(with_compat.clone())
        .and(with_registry.clone())
        .then(queue::seed_list)
        .and_then(finish);
    let seed_timer = warp::path!("update-timer" / u64)
        .and(warp::get())
        .and(warp::query::<queue::ResetQuery>())
        .and(sight.clone())
        .and(warp::header::headers_cloned())
        .and(with_compat.clone())
        .and(with_registry.clone())
        .then(queue::seed_timer)
        .and_then(finish);
    let seed_toggle = warp::path!("update-block-toggle")
        .and(warp::get())
        .and(sight.clone())
        .and(warp::header::headers_cloned())
        .and(with_compat.clone())
        .and(with_registry.clone())
        .then(queue::seed_block_toggle)
        .and_then(finish);

    let recordings_list = warp::path!("api" / "v1" / "relays" / String / "recordings")
        .and(warp::get())
        .and(with_registry.clone())
        .then(recordings::list)
        .and_then(finish);
    let recording_delete = warp::path!("api" / "v1" / "relays" / String / "recordings" / String)
        .and(warp::delete())
        .and(with_registry.clone())
        .then(recordings::delete)
        .and_then(finish);
    let recording_markers =
        warp::path!("api" / "v1" / "relays" / String / "recordings" / String / "markers")
            .and(warp::get())
            .and(with_registry.clone())
            .then(recordings::markers)
            .and_then(finish);
    // The files, by warp's file server (Range and conditional requests); anything else under
    // /recordings/ is a JSON 404.
    let recording_files = warp::path("recordings").and(warp::get()).and(
        warp::fs::dir(shared.recordings_root.clone())
            .map(|file: warp::fs::File| file.into_response())
            .or(warp::path::tail()
                .then(recordings::no_such_file)
                .and_then(finish))
            .unify(),
    );

    let hls = warp::path("hls")
        .and(warp::get())
        .and(warp::path::tail())
        .then(move |tail: warp::path::Tail| hls::serve(hls_root.clone(), tail.as_str().to_owned()))
        .and_then(finish);

    // The operator console: a static page and its files, built into the binary.
    let console_page = warp::path::end()
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(console::index)
        .and_then(finish);
    let console_file = warp::path!("console" / String)
        .and(warp::get())
        .and(warp::header::optional::<String>("if-none-match"))
        .map(|name: String, etag| console::file(&name, etag))
        .and_then(finish);

    vec![
        route("GET", &["/"], console_page),
        route("GET", &["/console/{file}"], console_file),
        route("GET", &["/healthz"], healthz),
        route("GET", &["/metrics"], metrics),
        route("GET", &["/api/v1/events"], events),
        route("GET", &["/api/v1/openapi.json"], openapi),
        route("GET", &["/api/v1/relays"], list),
        route("POST", &["/api/v1/relays"], create),
        route("GET", &["/api/v1/relays/{id}"], get),
        route("PATCH", &["/api/v1/relays/{id}"], patch),
        route("DELETE", &["/api/v1/relays/{id}"], delete),
        route("POST", &["/api/v1/relays/{id}/start"], start),
        route("POST", &["/api/v1/relays/{id}/stop"], stop),
        route("POST", &["/api/v1/relays/{id}/outputs"], add_output),
        route(
            "DELETE",
            &["/api/v1/relays/{id}/outputs/{output_id}"],
            remove_output,
        ),
        route("GET", &["/api/v1/relays/{id}/thumbnail.jpg"], thumbnail),
        route("GET", &["/api/v1/relays/{id}/recordings"], recordings_list),
        route(
            "DELETE",
            &["/api/v1/relays/{id}/recordings/{recording}"],
            recording_delete,
        ),
        route(
            "GET",
            &["/api/v1/relays/{id}/recordings/{recording}/markers"],
            recording_markers,
        ),
        route("GET", &["/recordings/{relay}/{file}"], recording_files),
        route("GET", &["/api/v1/relays/{id}/score"], get_score),
        route("PUT", &["/api/v1/relays/{id}/score"], put_score),
        route("GET", &["/api/v1/relays/{id}/graphics"], get_graphics),
        route("PUT", &["/api/v1/relays/{id}/graphics/{layer}"], put_layer),
        route("GET", &["/api/v1/relays/{id}/casters"], list_casters),
        route("POST", &["/api/v1/relays/{id}/casters"], add_caster),
        route(
            "DELETE",
            &["/api/v1/relays/{id}/casters/{name}"],
            delete_caster,
        ),
        route("GET", &["/api/v1/relays/{id}/queue"], get_queue),
        route("POST", &["/api/v1/relays/{id}/queue/skip"], skip),
        route("PUT", &["/api/v1/relays/{id}/queue/order"], order),
        route("POST", &["/api/v1/relays/{id}/queue/timer"], timer),
        route("POST", &["/api/v1/relays/{id}/queue/block"], block),
        route("DELETE", &["/api/v1/relays/{id}/queue/{name}"], kick),
        route("GET", &["/queue-json"], seed_json),
        route("GET", &["/queue-list"], seed_list),
        route("GET", &["/update-timer/{seconds}"], seed_timer),
        route("GET", &["/update-block-toggle/"], seed_toggle),
        route("POST", &["/start_stream"], start_stream),
        route("POST", &["/stop_stream"], stop_stream),
        route("GET", &["/list_streams"], list_streams),
        route(
            "GET",
            &[
                "/hls/{relay}/master.m3u8",
                "/hls/{relay}/dvr.m3u8",
                "/hls/{relay}/{rendition}/{file}",
            ],
            hls,
        ),
    ]
}

/// What the routes serve from: the daemon's relays and files, and the rules in force.
#[derive(Clone)]
pub struct Shared {
    pub registry: Arc<Registry>,
    pub hls_root: PathBuf,
    /// `<data_dir>/recordings`, served at `/recordings/`.
    pub recordings_root: PathBuf,
    pub auth: Arc<Auth>,
    pub browsers: Arc<Browsers>,
    pub compat: Arc<CompatSettings>,
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every route (`server.api_listen`).
    All,
    /// The compatible routes only (`compat.listen`, the old service's port): the Flask
    /// relay's three and the seed's queue routes.
    Compat,
}

/// The routes `which` names, behind the browser rules and the token check.
pub fn routes(
    shared: &Shared,
    which: Which,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Last: an empty id under /api/v1/relays/ matches no route above; say so.
    let empty_id = warp::path::full().and_then(|path: warp::path::FullPath| async move {
        match handlers::empty_path_id(path.as_str()) {
            Some(error) => Ok(error.into_response()),
            None => Err(warp::reject::not_found()),
        }
    });

    // Boxed one by one: a chain of sixteen unboxed `or`s nests types deep enough to make the
    // crate take twenty minutes to compile.
    let all = table(shared)
        .into_iter()
        .filter(|route| {
            which == Which::All
                || browsers::COMPAT_PATHS.contains(&route.paths[0])
                || queue::SEED_PATHS.contains(&route.paths[0])
        })
        .map(|route| route.filter)
        .chain([empty_id.boxed()])
        .reduce(|routes, route| routes.or(route).unify().boxed())
        .expect("the API has routes");
    let auth = shared.auth.clone();
    from_no_foreign_page(shared.browsers.clone(), auth.clone())
        .and(authorized(auth))
        .and(all)
        .recover(error::recover)
        .unify()
}

/// Serves the routes `which` names on `listener` until `shutdown` completes.
pub async fn serve(
    listener: server::Listener,
    shared: Shared,
    which: Which,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    server::run(listener, routes(&shared, which), shutdown).await;
}
