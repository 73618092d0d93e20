//! The admin API client: one method per endpoint, JSON in and out.
//!
//! Owns: turning HTTP outcomes into [`CtlError`] (status + `{"error": msg}` → `Api`,
//! no answer → `Unreachable`). May not touch: output formatting.

use serde_json::Value;

use crate::discovery::Endpoint;
use crate::error::{CtlError, Result};
use crate::http::{self, BaseUrl, HttpError};

/// A client for one control instance.
pub struct Client {
    url: String,
    base: BaseUrl,
    token: Option<String>,
}

impl Client {
    pub fn new(ep: &Endpoint) -> Result<Client> {
        let base = BaseUrl::parse(&ep.admin_url).map_err(|e| CtlError::usage(e.to_string()))?;
        Ok(Client {
            url: ep.admin_url.clone(),
            base,
            token: ep.token.clone(),
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("PUT", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }

    fn call(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<Value> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let resp = http::request(
            &self.base,
            method,
            path,
            self.token.as_deref(),
            bytes.as_deref(),
        )
        .map_err(|e| self.unreachable(e))?;
        let parsed: Option<Value> = if resp.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            serde_json::from_slice(&resp.body).ok()
        };
        if (200..300).contains(&resp.status) {
            return match (parsed, resp.body.is_empty()) {
                (Some(v), _) => Ok(v),
                (None, true) => Ok(Value::Null),
                (None, false) if resp.status == 204 => Ok(Value::Null),
                (None, false) => Err(CtlError::Other(format!(
                    "{method} {path}: control answered {} with a body that is not JSON",
                    resp.status
                ))),
            };
        }
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&resp.body);
                let text = text.trim();
                if text.is_empty() {
                    reason(resp.status).to_string()
                } else {
                    text.chars().take(200).collect()
                }
            });
        Err(CtlError::Api {
            status: resp.status,
            method,
            path: path.to_string(),
            msg,
        })
    }

    fn unreachable(&self, e: HttpError) -> CtlError {
        match e {
            HttpError::BadUrl(_) => CtlError::usage(e.to_string()),
            e => CtlError::Unreachable {
                url: self.url.clone(),
                msg: e.to_string(),
            },
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized (wrong or missing admin token)",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        500 => "internal server error",
        503 => "service unavailable",
        _ => "request failed",
    }
}
