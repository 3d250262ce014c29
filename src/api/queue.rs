//! A queue relay's routes: its casters (`/api/v1/relays/{id}/casters`), its queue
//! (`/api/v1/relays/{id}/queue`, skip, kick, order, timer), and the seed-compatible routes on
//! the relay `compat.queue_relay` names (`/queue-json`, `/queue-list`,
//! `/update-timer/{seconds}`, `/update-block-toggle/`).
//!
//! Owns the request and answer shapes of these routes. The rules are the relay's.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use crate::compat::CompatSettings;
use crate::relay::registry::Registry;
use crate::relay::spec::check_name;
use crate::relay::{QueueOp, QueueStatus, RelayHandle};
use crate::secrets::{self, Sight};

/// The seed's queue routes, served on `compat.listen` too (path templates).
pub const SEED_PATHS: [&str; 4] = [
    "/queue-json",
    "/queue-list",
    "/update-timer/{seconds}",
    "/update-block-toggle/",
];

/// Names a caster may not have: they are the queue's own routes.
pub const RESERVED_NAMES: [&str; 4] = ["skip", "order", "timer", "block"];

/// The longest turn the timer takes: a day.
const MAX_TURN_SECONDS: u64 = 24 * 60 * 60;

fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// The relay `id`, which must be a queue relay, and its queue now (one round trip: asking
/// for the queue is how a relay without one says so).
async fn queue_relay(
    registry: &Registry,
    id: &str,
) -> Result<(RelayHandle, QueueStatus), ApiError> {
    check_name("id", id).map_err(ApiError::invalid_id)?;
    let handle = registry.get(id).ok_or_else(|| ApiError::not_found(id))?;
    let status = handle.queue().await?;
    Ok((handle, status))
}

/// A JSON body, or 400 saying what is wrong and showing `example`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, ApiError> {
    super::handlers::parse(body).map_err(|e| ApiError::bad_body(format!("{e}; send {example}")))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `GET .../queue`'s answer.
fn view(status: &QueueStatus) -> Value {
    let saved = &status.saved;
    let now = unix_now();
    json!({
        "on_air": saved.on_air.as_ref().map(|t| json!({
            "name": t.name,
            "since": t.since,
            "time_left": (t.ends - now).max(0.0),
        })),
        "waiting": saved.waiting.iter().map(|w| json!({
            "name": w.name,
            "since": w.since,
            "connected": status.connected.contains(&w.name),
        })).collect::<Vec<_>>(),
        "block_kicked": saved.block_kicked,
        "turn": saved.turn,
        "blocked": saved.blocked.iter().map(|b| json!({
            "name": b.name,
            "seconds_left": (b.until - now).max(0.0).ceil(),
        })).collect::<Vec<_>>(),
    })
}

pub async fn list_casters(
    id: String,
    sight: Sight,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    queue_relay(&registry, &id).await?;
    let casters: Vec<Value> = registry
        .casters(&id)?
        .list()
        .into_iter()
        .map(|c| {
            let key = match sight {
                Sight::Full => c.stream_key,
                Sight::Masked => secrets::stream_key(&c.stream_key),
            };
            json!({ "name": c.name, "stream_key": key })
        })
        .collect();
    Ok(json_reply(StatusCode::OK, &casters))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCaster {
    name: String,
}

/// `POST .../casters {"name"}`: a caster with a fresh key, shown once here in full.
pub async fn add_caster(
    id: String,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (handle, _) = queue_relay(&registry, &id).await?;
    let new: NewCaster = parse_body(&body, "{\"name\": \"alice\"}")?;
    check_name("name", &new.name).map_err(|e| ApiError::bad_body(e.to_string()))?;
    if RESERVED_NAMES.contains(&new.name.as_str()) {
        return Err(ApiError::bad_body(format!(
            "name: {:?} is taken by the queue's routes; choose another",
            new.name
        )));
    }
    let caster = registry.casters(&id)?.add(&id, &new.name)?;
    handle.queue_op(QueueOp::CasterAdded).await?;
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({ "name": caster.name, "stream_key": caster.stream_key }),
    ))
}

/// `DELETE .../casters/{name}`: their key stops working; if connected, they are disconnected.
pub async fn delete_caster(
    id: String,
    name: String,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let (handle, _) = queue_relay(&registry, &id).await?;
    check_name("name", &name).map_err(ApiError::invalid_id)?;
    registry.casters(&id)?.remove(&id, &name)?;
    handle.queue_op(QueueOp::CasterRemoved(name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn get_queue(id: String, registry: Arc<Registry>) -> Result<Response, ApiError> {
    let (_, status) = queue_relay(&registry, &id).await?;
    Ok(json_reply(StatusCode::OK, &view(&status)))
}

/// `POST .../queue/skip`, `DELETE .../queue/{name}`: each answers with the queue after it.
pub async fn operate(
    id: String,
    op: QueueOp,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let (handle, _) = queue_relay(&registry, &id).await?;
    if let QueueOp::Kick(name) = &op {
        check_name("name", name).map_err(ApiError::invalid_id)?;
    }
    Ok(json_reply(
        StatusCode::OK,
        &view(&handle.queue_op(op).await?),
    ))
}

/// `PUT .../queue/order`: `{"order": ["bob", "alice"]}` (or the bare list).
pub async fn put_order(
    id: String,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Order {
        Wrapped { order: Vec<String> },
        Bare(Vec<String>),
    }
    let order = match serde_json::from_slice::<Order>(&body) {
        Ok(Order::Wrapped { order } | Order::Bare(order)) => order,
        Err(_) => return Err(ApiError::bad_body(
            "send the waiting casters' names in their new order: {\"order\": [\"bob\", \"alice\"]}",
        )),
    };
    operate(id, QueueOp::Order(order), registry).await
}

/// `POST .../queue/timer {"seconds", "reset"}`.
pub async fn post_timer(
    id: String,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Timer {
        seconds: u64,
        #[serde(default)]
        reset: bool,
    }
    let timer: Timer = parse_body(&body, "{\"seconds\": 600, \"reset\": false}")?;
    let seconds = turn_seconds(timer.seconds)?;
    operate(
        id,
        QueueOp::Timer {
            seconds,
            reset: timer.reset,
        },
        registry,
    )
    .await
}

/// `POST .../queue/block {"block_kicked": true|false}`: turns the block of kicked casters on
/// or off (off lifts every block in force).
pub async fn post_block(
    id: String,
    registry: Arc<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Block {
        block_kicked: bool,
    }
    let block: Block = parse_body(&body, "{\"block_kicked\": false}")?;
    operate(id, QueueOp::Block(Some(block.block_kicked)), registry).await
}

fn turn_seconds(seconds: u64) -> Result<u64, ApiError> {
    if !(1..=MAX_TURN_SECONDS).contains(&seconds) {
        return Err(ApiError::bad_body(format!(
            "seconds: a turn lasts 1 to {MAX_TURN_SECONDS} seconds, not {seconds}"
        )));
    }
    Ok(seconds)
}

/// The relay the seed-compatible routes act on.
async fn seed_relay(
    compat: &CompatSettings,
    registry: &Registry,
) -> Result<(RelayHandle, QueueStatus), ApiError> {
    let Some(id) = &compat.queue_relay else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_queue",
            "no queue relay is named: set compat.queue_relay in the config",
        ));
    };
    queue_relay(registry, id).await
}

/// `GET /queue-json`: the seed's list, the caster on air first, then the waiting ones.
pub async fn seed_json(
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let (_, status) = seed_relay(&compat, &registry).await?;
    let saved = &status.saved;
    let names: Vec<&String> = saved
        .on_air
        .iter()
        .map(|t| &t.name)
        .chain(saved.waiting.iter().map(|w| &w.name))
        .collect();
    Ok(json_reply(StatusCode::OK, &names))
}

/// `GET /queue-list`: the queue as a page an OBS browser source can show (white text on a
/// transparent background, refreshed every 2 s).
pub async fn seed_list(
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    let (_, status) = seed_relay(&compat, &registry).await?;
    let saved = &status.saved;
    let now = unix_now();
    let on_air = match &saved.on_air {
        Some(t) => {
            let left = (t.ends - now).max(0.0) as u64;
            format!(
                "{} <span class=\"left\">{}:{:02} left</span>",
                escape(&t.name),
                left / 60,
                left % 60
            )
        }
        None => "nobody".to_owned(),
    };
    let waiting: String = saved
        .waiting
        .iter()
        .map(|w| format!("<li>{}</li>", escape(&w.name)))
        .collect();
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Queue</title>\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <style>body{{color:#fff;background:transparent;font-family:sans-serif}}\
         ul{{list-style:none;padding-left:1em}}.left{{opacity:.7}}</style></head>\
         <body><h1>Queue</h1><h2 id=\"on-air\">On air: {on_air}</h2><h3>Next up</h3>\
         <ul id=\"waiting\">{waiting}</ul></body></html>\n"
    );
    Ok(warp::reply::with_header(page, "content-type", "text/html; charset=utf-8").into_response())
}

/// A state-changing GET (the seed's timer and toggle) that a web page might have caused: a
/// browser marks its requests from other sites with `Sec-Fetch-Site`.
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if matches!(site, "none" | "same-origin") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        "this route changes the queue: a page from another site may not call it",
    ))
}

/// The seed's routes change the queue with a GET; with tokens, only an admin token may.
fn may_change(sight: Sight, headers: &HeaderMap) -> Result<(), ApiError> {
    refuse_cross_site(headers)?;
    match sight {
        Sight::Full => Ok(()),
        Sight::Masked => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route changes the queue: it needs an admin token",
        )),
    }
}

#[derive(Deserialize)]
pub struct ResetQuery {
    reset_time: Option<String>,
}

/// `GET /update-timer/{seconds}?reset_time=true|false`.
pub async fn seed_timer(
    seconds: u64,
    query: ResetQuery,
    sight: Sight,
    headers: HeaderMap,
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    may_change(sight, &headers)?;
    let reset = match query.reset_time.as_deref().map(str::to_ascii_lowercase) {
        None => false,
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" => false,
        Some(v) => {
            return Err(ApiError::bad_body(format!(
                "reset_time: {v:?} is not true or false"
            )))
        }
    };
    let seconds = turn_seconds(seconds)?;
    let (handle, _) = seed_relay(&compat, &registry).await?;
    let status = handle.queue_op(QueueOp::Timer { seconds, reset }).await?;
    Ok(json_reply(StatusCode::OK, &view(&status)))
}

/// `GET /update-block-toggle/`: flips the block of kicked casters.
pub async fn seed_block_toggle(
    sight: Sight,
    headers: HeaderMap,
    compat: Arc<CompatSettings>,
    registry: Arc<Registry>,
) -> Result<Response, ApiError> {
    may_change(sight, &headers)?;
    let (handle, _) = seed_relay(&compat, &registry).await?;
    let status = handle.queue_op(QueueOp::Block(None)).await?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "block_kicked": status.saved.block_kicked }),
    ))
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
