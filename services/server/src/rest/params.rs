//! Path and query parameters, with every way they can be wrong answered like a bad body is: 422
//! `{"detail": [{"loc": ["path" | "query", name], "msg", "type"}]}`, never axum's plain text.

use axum::extract::{FromRequestParts, rejection::PathRejection};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::RestError;

/// Path parameters, like axum's `Path`.
pub struct Path<T>(pub T);

/// Query parameters, like axum's `Query`; unknown parameters are ignored.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, RestError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &PathRejection) -> RestError {
    use axum::extract::path::ErrorKind;
    let key = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. } => key.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    RestError::validation("path", &key, rejection.body_text(), "path_parsing")
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, RestError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Self)
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, RestError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let at = err.path().iter().find_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            _ => None,
        });
        let reason = err.into_inner().to_string();
        // A repeated parameter fails on the whole map, so only serde's message names it.
        let name = at
            .or_else(|| {
                let (_, rest) = reason.split_once('`')?;
                Some(rest.split('`').next()?.to_owned())
            })
            .unwrap_or_default();
        let msg = if name.is_empty() {
            format!("invalid query string: {reason}")
        } else {
            format!("{name}: {reason}")
        };
        RestError::validation("query", &name, msg, "query_parsing")
    })
}
