//! JSON parsing that names the offending field, for 400s and 4000s people can act on.

use serde::Deserialize;

/// Bad input; `field` names where (`channels[2]`, `data`, `[3].event`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON into `T`; on failure names the field (`body` when the text is not JSON at all).
///
/// # Errors
/// A [`FieldError`] naming the first bad field.
pub fn parse_json<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = match path.as_str() {
            // serde reports a missing field at the parent's path; its name is in the message.
            "." => missing_field(&inner).unwrap_or_default(),
            _ => path,
        };
        FieldError::new(field, describe(&inner))
    })
}

/// serde_json's message without its "at line 1 column 12": the field path already says where.
pub fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

fn missing_field(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}
