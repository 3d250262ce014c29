//! A relay's recordings over HTTP: `GET /api/v1/relays/{id}/recordings` (the list) and
//! `DELETE …/recordings/{rid}`. The files themselves are served at
//! `/recordings/{relay}/{rid}.mp4` by warp's file server, which answers `Range` requests (so
//! players seek) and conditional ones.
//!
//! Owns the answer shapes. Which files exist is [`recordings`]'s.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response as Reply;
use warp::Reply as _;

use super::error::ApiError;
use crate::relay::handle::RecordingsInfo;
use crate::relay::recordings::{self, FileInfo};
use crate::relay::registry::Registry;
use crate::relay::spec::check_name;

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn info(registry: &Registry, id: &str) -> Result<RecordingsInfo, ApiError> {
    check_name("id", id).map_err(ApiError::invalid_id)?;
    let handle = registry.get(id).ok_or_else(|| ApiError::not_found(id))?;
    Ok(handle.recordings().await?)
}

/// Relay `id`'s recordings and its recording `rid`.
async fn recording(
    registry: &Registry,
    id: &str,
    rid: &str,
) -> Result<(RecordingsInfo, FileInfo), ApiError> {
    let info = info(registry, id).await?;
    let file = info
        .dir
        .as_deref()
        .and_then(|dir| recordings::find(dir, rid))
        .ok_or_else(|| no_recording(id, rid))?;
    Ok((info, file))
}

fn no_recording(id: &str, rid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "recording_not_found",
        format!("relay {id} has no recording {rid:?}"),
    )
}

/// One recording as listed.
fn view(id: &str, file: &FileInfo, open: bool) -> serde_json::Value {
    let ended = (!open).then(|| unix(file.modified));
    let end = ended.unwrap_or_else(|| unix(SystemTime::now()));
    json!({
        "id": file.id,
        "started_at": unix(file.started),
        "ended_at": ended,
        "duration": (end - unix(file.started)).max(0.0),
        "bytes": file.bytes,
        "url": format!("/recordings/{id}/{}.mp4", file.id),
    })
}

/// `GET .../recordings`: oldest first.
pub async fn list(id: String, registry: Arc<Registry>) -> Result<Reply, ApiError> {
    let info = info(&registry, &id).await?;
    let files = info
        .dir
        .as_deref()
        .map(recordings::list)
        .unwrap_or_default();
    let views: Vec<_> = files
        .iter()
        .map(|f| view(&id, f, info.open.as_deref() == Some(f.path.as_path())))
        .collect();
    Ok(warp::reply::with_status(warp::reply::json(&views), StatusCode::OK).into_response())
}

/// `GET .../recordings/{rid}/markers`: each scoreboard the recording saw, `[{"at",
/// "scoreboard"}]`, from the one on screen when it began.
pub async fn markers(id: String, rid: String, registry: Arc<Registry>) -> Result<Reply, ApiError> {
    let (_, file) = recording(&registry, &id, &rid).await?;
    let markers = recordings::markers(&file.path);
    Ok(warp::reply::with_status(warp::reply::json(&markers), StatusCode::OK).into_response())
}

/// `/recordings/{relay}/{file}` that is not a recording: a JSON 404 like the API's.
pub async fn no_such_file(tail: warp::path::Tail) -> Result<Reply, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "recording_not_found",
        format!("no recording /recordings/{}", tail.as_str()),
    ))
}

/// `DELETE .../recordings/{rid}`: not the file being written.
pub async fn delete(id: String, rid: String, registry: Arc<Registry>) -> Result<Reply, ApiError> {
    let (info, file) = recording(&registry, &id, &rid).await?;
    if info.open.as_deref() == Some(file.path.as_path()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "recording_open",
            format!("relay {id} is still writing recording {rid}; stop the relay first, or wait for the next split"),
        ));
    }
    recordings::remove(&file.path)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
