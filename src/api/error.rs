//! Every error the API returns, mapped to a status and a JSON body, in one place.
//!
//! `/api/v1` errors are `{"error": {"code", "message"}}`. The compatible routes of the older
//! relay service keep its `{"error": "..."}` body, because operators' scripts parse it.

use std::convert::Infallible;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::relay::casters::CasterError;
use crate::relay::queue::QueueError;
use crate::relay::registry::RegistryError;
use crate::relay::spec::SpecError;
use crate::relay::RelayError;

/// An `/api/v1` error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "relay_not_found",
            format!("no relay with id {id:?}"),
        )
    }

    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    /// An id in the path that no relay or destination could have: empty, too long, or with
    /// characters outside the safe set (which rules out `..` and `/`).
    pub fn invalid_id(e: SpecError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{} in the path: {}", e.field, e.message),
        )
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let (status, code) = match &e {
            RegistryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_relay"),
            RegistryError::Limit(_) => (StatusCode::BAD_REQUEST, "limit_reached"),
            RegistryError::DuplicateId(_) => (StatusCode::CONFLICT, "relay_exists"),
            RegistryError::DuplicateKey { .. } | RegistryError::KeyClash { .. } => {
                (StatusCode::CONFLICT, "stream_key_in_use")
            }
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "relay_not_found"),
            RegistryError::Relay(e) => relay_status(e),
            RegistryError::BadPatch(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            RegistryError::Running(_) => (StatusCode::CONFLICT, "relay_state"),
            RegistryError::NotSaved(_) => (StatusCode::INTERNAL_SERVER_ERROR, "state_not_saved"),
        };
        Self::new(status, code, e.to_string())
    }
}

fn relay_status(e: &RelayError) -> (StatusCode, &'static str) {
    match e {
        RelayError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_relay"),
        RelayError::NotRunning { .. }
        | RelayError::AlreadyPublishing { .. }
        | RelayError::NotPush { .. } => (StatusCode::CONFLICT, "relay_state"),
        RelayError::Pipeline { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "pipeline"),
        RelayError::Gone { .. } => (StatusCode::NOT_FOUND, "relay_not_found"),
        RelayError::OutputExists { .. } => (StatusCode::CONFLICT, "output_exists"),
        RelayError::NoSuchOutput { .. } => (StatusCode::NOT_FOUND, "output_not_found"),
        RelayError::NoQueue { .. } => (StatusCode::NOT_FOUND, "no_queue"),
        RelayError::Queue {
            source: QueueError::NotQueued(_),
            ..
        } => (StatusCode::NOT_FOUND, "caster_not_queued"),
        RelayError::Queue {
            source: QueueError::BadOrder(_),
            ..
        } => (StatusCode::BAD_REQUEST, "invalid_order"),
        RelayError::Blocked { .. }
        | RelayError::CasterConnected { .. }
        | RelayError::QueueNeedsCaster { .. } => (StatusCode::CONFLICT, "relay_state"),
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> Self {
        let (status, code) = relay_status(&e);
        Self::new(status, code, e.to_string())
    }
}

impl From<CasterError> for ApiError {
    fn from(e: CasterError) -> Self {
        let (status, code) = match &e {
            CasterError::Exists { .. } => (StatusCode::CONFLICT, "caster_exists"),
            CasterError::NotFound { .. } => (StatusCode::NOT_FOUND, "caster_not_found"),
            CasterError::NoQueue(_) => (StatusCode::NOT_FOUND, "no_queue"),
            CasterError::Random(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// An error on the compatible routes: the old service's `{"error": "..."}` body.
#[derive(Debug)]
pub struct CompatError {
    pub status: StatusCode,
    pub message: String,
}

impl CompatError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl Reply for CompatError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message });
        warp::reply::with_status(warp::reply::json(&body), self.status).into_response()
    }
}

/// A request body over the API's limit.
#[derive(Debug)]
pub struct BodyTooLarge;
impl warp::reject::Reject for BodyTooLarge {}

/// A request body that broke off while being read.
#[derive(Debug)]
pub struct BodyUnreadable;
impl warp::reject::Reject for BodyUnreadable {}

fn body_too_large() -> String {
    format!(
        "the request body is over the limit of {} bytes",
        super::MAX_BODY_BYTES
    )
}

const BODY_UNREADABLE: &str = "the request body could not be read";

/// Maps the body errors of a compatible route to the old service's error body; leaves every
/// other rejection to [`recover`].
pub async fn recover_compat(rejection: Rejection) -> Result<Response, Rejection> {
    if rejection.find::<BodyTooLarge>().is_some() {
        Ok(CompatError::new(StatusCode::PAYLOAD_TOO_LARGE, body_too_large()).into_response())
    } else if rejection.find::<BodyUnreadable>().is_some() {
        Ok(CompatError::new(StatusCode::BAD_REQUEST, BODY_UNREADABLE).into_response())
    } else {
        Err(rejection)
    }
}

/// Maps warp's own rejections (no route, wrong method, body too large) and the refusals of
/// [`super::browsers`] and [`super::auth`] to JSON.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(super::browsers::Refused { error, compat }) = rejection.find() {
        return Ok(if *compat {
            CompatError::new(error.status, error.message.clone()).into_response()
        } else {
            ApiError::new(error.status, error.code, error.message.clone()).into_response()
        });
    }
    if let Some(super::auth::Refused(e)) = rejection.find() {
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let error = ApiError::new(e.status, e.code, e.message.clone());
        let mut response = error.into_response();
        if unauthorized {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        return Ok(response);
    }
    let error = if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<BodyTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            body_too_large(),
        )
    } else if rejection.find::<BodyUnreadable>().is_some() {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", BODY_UNREADABLE)
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else {
        tracing::warn!(rejection = ?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unhandled request error",
        )
    };
    Ok(error.into_response())
}
