//! Request handlers: parse the body, talk to relays through their handles, shape the reply.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::error::{ApiError, CompatError};
use super::metrics::Scraped;
use super::wire::{RelayView, ScoreView};
use crate::compat::CompatSettings;
use crate::events::Subscription;
use crate::relay::graphics::{GraphicsError, LayerChange};
use crate::relay::registry::{Registry, RegistryError};
use crate::relay::spec::{check_name, OutputSpec, RelaySpec};
use crate::relay::RelayHandle;
use crate::scores::Scoreboard;
use crate::secrets::{self, Sight};

/// Parses a JSON body, with a message that says what is wrong and where.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    if body.is_empty() {
        return Err("the request body is empty; send JSON".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Checks an id taken from the path (`id` or `output_id`) before anything is looked up.
fn path_id(field: &str, value: &str) -> Result<(), ApiError> {
    check_name(field, value).map_err(ApiError::invalid_id)
}

/// The relay with a valid path `id`.
fn relay(registry: &Registry, id: &str) -> Result<RelayHandle, ApiError> {
    path_id("id", id)?;
    registry.get(id).ok_or_else(|| ApiError::not_found(id))
}

fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub async fn healthz() -> Result<Response, ApiError> {
    Ok(json_reply(StatusCode::OK, &json!({ "status": "ok" })))
}

pub async fn list_relays(sight: Sight, registry: Arc<Registry>) -> Result<Response, ApiError> {
    // Every actor is asked at once: one round of wake-ups per request, not one per relay.
    let handles = registry.list();
    let statuses = futures_util::future::join_all(handles.iter().map(|h| h.status())).await;
    // A relay deleted meanwhile is simply left out.
    let views: Vec<RelayView> = statuses
        .into_iter()
        .flatten()
        .map(|status| RelayView::seen(status, sight))
        .collect();
    Ok(json_reply(StatusCode::OK, &views))
}

/// `GET /metrics`: every relay and destination in the Prometheus text format.
pub async fn metrics(registry: Arc<Registry>) -> Result<Response, ApiError> {
    let mut relays = Vec::new();
    for handle in registry.list() {
        // A relay deleted meanwhile is simply left out.
        let (Ok(status), Ok(counters)) = (handle.status().await, handle.counters().await) else {
            continue;
        };
        let pulled = status.spec.ingest.url.clone();
        relays.push(Scraped {
            // Ids and numbers only; masked all the same, as read-only tokens scrape it.
            relay: RelayView::seen(status, Sight::Masked),
            score: handle
                .score()
                .await
                .ok()
                .map(|s| ScoreView::seen(s, Sight::Masked, pulled.as_deref())),
            counters,
        });
    }
    Ok(warp::reply::with_header(
        super::metrics::render(&relays),
        "content-type",
        super::metrics::CONTENT_TYPE,
    )
    .into_response())
}

/// `GET /api/v1/events`: Server-Sent Events, from after `last_id` (`Last-Event-ID`) when the
/// client resumes, until the daemon stops.
pub async fn events(last_id: Option<u64>, registry: Arc<Registry>) -> Result<Response, ApiError> {
    let Subscription {
        missed,
        live,
        closed,
        slot,
    } = registry.events().subscribe(last_id).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "event_stream_limit",
            e.to_string(),
        )
    })?;
    let after = missed.last().map(|e| e.id).or(last_id).unwrap_or(0);
    // The slot goes with the stream: it comes back when the client goes.
    let live = futures_util::stream::unfold(
        (live, closed, after, slot),
        |(mut live, mut closed, after, slot)| async move {
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = closed.wait_for(|closed| *closed) => return None,
                };
                match received {
                    // Already sent from the history.
                    Ok(event) if event.id <= after => continue,
                    Ok(event) => {
                        let id = event.id;
                        return Some((event, (live, closed, id, slot)));
                    }
                    // A client this far behind resumes from the history (`Last-Event-ID`).
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
                }
            }
        },
    );
    let stream = futures_util::stream::iter(missed).chain(live).map(|event| {
        let sse = warp::sse::Event::default()
            .id(event.id.to_string())
            .event(event.kind)
            .json_data(&event)
            .unwrap_or_else(|_| warp::sse::Event::default().comment("unserializable event"));
        Ok::<_, std::convert::Infallible>(sse)
    });
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response())
}

pub async fn create_relay(
    sight: Sight,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: RelaySpec = parse(&body).map_err(ApiError::bad_body)?;
    let status = registry.create_saved(spec).await?;
    Ok(json_reply(
        StatusCode::CREATED,
        &RelayView::seen(status, sight),
    ))
}

pub async fn get_relay(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    Ok(json_reply(
        StatusCode::OK,
        &RelayView::seen(handle.status().await?, sight),
    ))
}

/// `PATCH /api/v1/relays/{id}`: a JSON merge patch of a stopped relay's spec.
pub async fn patch_relay(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    relay(&registry, &id)?;
    let patch: serde_json::Value = parse(&body).map_err(ApiError::bad_body)?;
    let status = registry.patch(&id, &patch).await?;
    Ok(json_reply(StatusCode::OK, &RelayView::seen(status, sight)))
}

pub async fn delete_relay(id: String, registry: Arc<Registry>) -> Result<Response, ApiError> {
    path_id("id", &id)?;
    registry.remove(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn start_relay(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    path_id("id", &id)?;
    Ok(json_reply(
        StatusCode::OK,
        &RelayView::seen(registry.start(&id).await?, sight),
    ))
}

pub async fn stop_relay(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    path_id("id", &id)?;
    Ok(json_reply(
        StatusCode::OK,
        &RelayView::seen(registry.stop(&id).await?, sight),
    ))
}

/// `POST .../outputs`: adds a destination; it goes live at once when the relay is.
pub async fn add_output(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    relay(&registry, &id)?;
    let spec: OutputSpec = parse(&body).map_err(ApiError::bad_body)?;
    Ok(json_reply(
        StatusCode::CREATED,
        &RelayView::seen(registry.add_output(&id, spec).await?, sight),
    ))
}

/// `DELETE .../outputs/{output_id}`: removes a destination; the rest carries on.
pub async fn remove_output(
    id: String,
    output_id: String,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    path_id("id", &id)?;
    path_id("output_id", &output_id)?;
    registry.remove_output(&id, &output_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET .../thumbnail.jpg`: the decoded program's latest thumbnail (overlay included).
pub async fn get_thumbnail(id: String, registry: Arc<Registry>) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    let Some(thumbnail) = handle.thumbnail().await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_thumbnail",
            format!(
                "relay {id} has no thumbnail yet: a decoded relay takes one every {} s while \
                 it runs; a passthrough relay never does",
                crate::pipeline::thumbnail::DEFAULT_THUMBNAIL_INTERVAL.as_secs()
            ),
        ));
    };
    warp::http::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "image/jpeg")
        .header("cache-control", "no-store")
        .body(thumbnail.jpeg.into())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

pub async fn get_score(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    let pulled = pulled_url(&handle, sight).await?;
    Ok(json_reply(
        StatusCode::OK,
        &ScoreView::seen(handle.score().await?, sight, pulled.as_deref()),
    ))
}

/// `PUT .../score`: the built-in scoreboard shape, set by hand.
pub async fn put_score(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    let board: Scoreboard = parse(&body).map_err(ApiError::bad_body)?;
    board
        .check()
        .map_err(|e| ApiError::bad_body(e.to_string()))?;
    let pulled = pulled_url(&handle, sight).await?;
    Ok(json_reply(
        StatusCode::OK,
        &ScoreView::seen(handle.set_score(board).await?, sight, pulled.as_deref()),
    ))
}

/// `GET .../graphics`: the relay's graphics layers, each with its data now.
pub async fn get_graphics(id: String, registry: Arc<Registry>) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({ "layers": handle.graphics().await? }),
    ))
}

/// `PUT .../graphics/{layer}`: `{"visible", "data"}`, the data fields merged into the layer's.
pub async fn put_layer(
    id: String,
    layer: String,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let handle = relay(&registry, &id)?;
    let change: LayerChange = parse(&body).map_err(ApiError::bad_body)?;
    match handle.change_layer(layer, change).await? {
        Ok(view) => Ok(json_reply(StatusCode::OK, &view)),
        Err(e @ GraphicsError::NoLayer(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "layer_not_found",
            format!("relay {id:?} has {e}"),
        )),
        Err(GraphicsError::Invalid { field, message }) => {
            Err(ApiError::bad_body(format!("{field}: {message}")))
        }
    }
}

/// The URL the relay pulls, when `sight` must have its stream name masked in the scores URL
/// ([`ScoreView::seen`]); a caller who sees everything costs no second call to the actor.
async fn pulled_url(handle: &RelayHandle, sight: Sight) -> Result<Option<String>, ApiError> {
    if sight == Sight::Full {
        return Ok(None);
    }
    Ok(handle.status().await?.spec.ingest.url)
}

/// A bad id anywhere under `/api/v1/relays/` that no route took because it is empty
/// (`/api/v1/relays//start`, `DELETE /api/v1/relays/`, `.../outputs/`).
pub fn empty_path_id(full_path: &str) -> Option<ApiError> {
    let rest = full_path.strip_prefix("/api/v1/relays/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let field = match segments.as_slice() {
        ["", ..] => "id",
        [_, "outputs", "", ..] => "output_id",
        _ => return None,
    };
    Some(ApiError::invalid_id(
        check_name(field, "").expect_err("an empty name is always refused"),
    ))
}

// The compatible routes of the older relay service.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartStream {
    youtube_url: Option<String>,
    stream_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopStream {
    stream_name: Option<String>,
}

fn required(field: Option<String>, name: &str) -> Result<String, CompatError> {
    match field {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(CompatError::new(
            StatusCode::BAD_REQUEST,
            format!("Missing required field: {name}"),
        )),
    }
}

fn bad_request(message: impl Into<String>) -> CompatError {
    CompatError::new(StatusCode::BAD_REQUEST, message)
}

/// A registry error on a compatible route, for stream `name`.
fn compat_error(e: RegistryError, name: &str) -> CompatError {
    match e {
        RegistryError::DuplicateId(_)
        | RegistryError::DuplicateKey { .. }
        | RegistryError::KeyClash { .. } => CompatError::new(
            StatusCode::CONFLICT,
            format!("Stream {name} is already active"),
        ),
        RegistryError::NotFound(_) => {
            CompatError::new(StatusCode::NOT_FOUND, format!("Stream {name} not found"))
        }
        e @ RegistryError::NotSaved(_) => {
            CompatError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        other => bad_request(other.to_string()),
    }
}

/// `POST /start_stream`: a relay with a fresh public id ([`secrets::public_id`]) for stream
/// `stream_name`, made as `[compat]` says ([`CompatSettings::spec_for`]: pulled or pushed,
/// with or without an overlay), pushing to one URL, started. A scores API that is down or a
/// stream not yet at the pull URL does not fail it: the relay goes live on the slate.
pub async fn start_stream(
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, CompatError> {
    let req: StartStream = parse(&body).map_err(bad_request)?;
    let youtube_url = required(req.youtube_url, "youtube_url")?;
    let name = required(req.stream_name, "stream_name")?;
    compat
        .check_stream_name(&name)
        .map_err(|e| bad_request(e.to_string()))?;
    let mut spec = compat.spec_for(&secrets::public_id(), &name, &youtube_url);
    spec.outputs[0]
        .validate("")
        .map_err(|e| bad_request(format!("youtube_url: {}", e.message)))?;
    // A pulled stream has no stream key for the registry to find taken: look by name.
    if compat.pulls() && find_stream(&compat, &registry, &name).await.is_some() {
        return Err(CompatError::new(
            StatusCode::CONFLICT,
            format!("Stream {name} is already active"),
        ));
    }
    // A fresh id that another relay has already (48 random bits: next to never) is drawn
    // again; a stream key in use is the old service's "already active".
    let mut attempts = 0;
    let status = loop {
        match registry.create_saved(spec.clone()).await {
            Err(RegistryError::DuplicateId(_)) if attempts < 3 => {
                attempts += 1;
                spec.id = secrets::public_id();
            }
            created => break created.map_err(|e| compat_error(e, &name))?,
        }
    };
    let id = status.spec.id;
    match registry.start(&id).await {
        Ok(_) => {}
        Err(e @ RegistryError::NotSaved(_)) => return Err(compat_error(e, &name)),
        Err(e) => {
            let _ = registry.remove(&id).await;
            return Err(bad_request(e.to_string()));
        }
    }
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "message": format!("Stream {name} started successfully"),
            "youtube_url": youtube_url,
            "id": id,
            "hls": format!("/hls/{id}/master.m3u8"),
        }),
    ))
}

/// The relay that stream `name` is: by its stream key when pushed, by its pull URL when
/// pulled.
async fn find_stream(
    compat: &CompatSettings,
    registry: &Registry,
    name: &str,
) -> Option<RelayHandle> {
    if !compat.pulls() {
        return registry.by_stream_key(name);
    }
    for handle in registry.list() {
        let Ok(status) = handle.status().await else {
            continue;
        };
        if compat.name_of(&status.spec).as_deref() == Some(name) {
            return Some(handle);
        }
    }
    None
}

/// `POST /stop_stream`: stops and removes the relay that owns the stream key.
pub async fn stop_stream(
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, CompatError> {
    let req: StopStream = parse(&body).map_err(bad_request)?;
    let name = required(req.stream_name, "stream_name")?;
    compat
        .check_stream_name(&name)
        .map_err(|e| bad_request(e.to_string()))?;
    let handle = find_stream(&compat, &registry, &name)
        .await
        .ok_or_else(|| {
            CompatError::new(StatusCode::NOT_FOUND, format!("Stream {name} not found"))
        })?;
    registry
        .remove(handle.id())
        .await
        .map_err(|e| compat_error(e, &name))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "message": format!("Stream {name} stopped successfully") }),
    ))
}

/// `GET /list_streams`: every running push relay. As the old service did, by stream key with
/// the full URL for whoever may see secrets; by the relay's public id with the URL masked for
/// the others.
pub async fn list_streams(
    sight: Sight,
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
) -> Result<Response, CompatError> {
    let mut streams = BTreeMap::new();
    for handle in registry.list() {
        let Ok(status) = handle.status().await else {
            continue;
        };
        let (Some(key), Some(started)) = (compat.name_of(&status.spec), status.started_at) else {
            continue;
        };
        let url = status.spec.outputs.first().map(|o| o.url.as_str());
        let (name, youtube_url) = match sight {
            Sight::Full => (key, url.unwrap_or_default().to_owned()),
            Sight::Masked => (
                status.spec.id,
                url.map(secrets::rtmp_url).unwrap_or_default(),
            ),
        };
        let uptime = started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
        streams.insert(
            name,
            json!({ "youtube_url": youtube_url, "uptime": uptime }),
        );
    }
    Ok(json_reply(StatusCode::OK, &streams))
}
