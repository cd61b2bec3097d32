//! JSON request bodies, with every way they can be wrong answered by a 4xx that says why:
//! 415 for another content type, 413 past the size limit, 422 naming the field for malformed
//! JSON, wrong types, nulls and missing fields. Unknown fields are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::RestError;

pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A required JSON body.
pub struct JsonBody<T>(pub T);

/// A JSON body that may be absent (empty), which reads as `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = RestError;

    async fn from_request(req: Request, state: &S) -> Result<Self, RestError> {
        let bytes = read(req, state, true).await?;
        parse(&bytes).map(Self)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = RestError;

    async fn from_request(req: Request, state: &S) -> Result<Self, RestError> {
        let bytes = read(req, state, false).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse(&bytes).map(Self)
    }
}

async fn read<S: Send + Sync>(req: Request, state: &S, required: bool) -> Result<Bytes, RestError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let too_large = || {
        RestError::detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: the limit is {MAX_BODY_BYTES} bytes"),
        )
    };
    // The body is read (up to axum's 2 MiB ceiling) before answering 413, so that a client still
    // sending it gets the answer rather than a reset connection.
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            RestError::detail(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    })?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let is_json = content_type.as_deref().is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    });
    if !is_json && (required || !bytes.is_empty()) {
        return Err(RestError::detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    Ok(bytes)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RestError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut loc = vec![serde_json::Value::from("body")];
        for segment in err.path().iter() {
            match segment {
                Segment::Seq { index } => loc.push((*index).into()),
                Segment::Map { key } => loc.push(key.as_str().into()),
                Segment::Enum { variant } => loc.push(variant.as_str().into()),
                Segment::Unknown => {}
            }
        }
        let inner = err.into_inner();
        let message = inner.to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            loc.push(field.into());
            return RestError::at(loc, "Field required", "missing");
        }
        if inner.is_syntax() || inner.is_eof() {
            return RestError::validation(
                "body",
                "",
                format!("Invalid JSON: {message}"),
                "json_invalid",
            );
        }
        RestError::at(loc, message, "type_error")
    })
}
