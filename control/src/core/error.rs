//! Why a core operation was refused: one typed error for sessions, routes, rooms, joins and
//! keys. The HTTP layer answers with [`CoreError::status`] and the message; audit entries
//! record the same status and message, whichever layer asked.

use crate::state::StoreError;

/// A refused or failed core operation. The `Display` text is the message clients and the
/// audit log see; it never contains a peer address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("session {0} not found")]
    SessionNotFound(u64),
    #[error("route {0} not found")]
    RouteNotFound(u64),
    /// Anything else that does not exist (an application, a `from:` session, ...).
    #[error("{0}")]
    NotFound(String),
    /// A request field with a bad value.
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    /// A malformed request that is not about one field (e.g. the SDP offer).
    #[error("{0}")]
    BadRequest(String),
    #[error("session {0} already uses this peer address")]
    PeerInUse(u64),
    /// The change contradicts the state (duplicate route, role may not publish, ...).
    #[error("{0}")]
    Conflict(String),
    /// Control drains: the admin API creates no session.
    #[error("control is draining: no new sessions are accepted")]
    Draining,
    #[error("shared memory unavailable: {0}")]
    ShmUnavailable(String),
    /// A table is full, or control drains and joins are refused.
    #[error("{0}")]
    Unavailable(String),
    /// The token's subject holds `max_sessions_per_subject` sessions in the room already.
    #[error("this subject already holds {0} sessions in the room")]
    TooManySessions(u32),
    /// The room holds `max_sessions_per_room` sessions already.
    #[error("the room is full ({0} sessions)")]
    RoomFull(u32),
    /// A WHEP offer the room cannot serve (no codec in common with its publishers).
    #[error("{0}")]
    NotAcceptable(String),
    /// Persisting, shared memory or randomness failed.
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    /// The status an answer and an audit entry carry for this error.
    pub fn status(&self) -> u16 {
        match self {
            CoreError::SessionNotFound(_)
            | CoreError::RouteNotFound(_)
            | CoreError::NotFound(_) => 404,
            CoreError::Invalid { .. } | CoreError::BadRequest(_) => 400,
            CoreError::PeerInUse(_) | CoreError::Conflict(_) | CoreError::Draining => 409,
            CoreError::ShmUnavailable(_) | CoreError::Unavailable(_) => 503,
            CoreError::TooManySessions(_) => 429,
            CoreError::RoomFull(_) => 403,
            CoreError::NotAcceptable(_) => 406,
            CoreError::Internal(_) => 500,
        }
    }

    /// A stable machine-readable reason, for the refusals that carry one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            CoreError::TooManySessions(_) => Some("too_many_sessions"),
            CoreError::RoomFull(_) => Some("room_full"),
            CoreError::NotAcceptable(_) => Some("no_common_codec"),
            _ => None,
        }
    }

    pub fn invalid(field: &str, msg: impl std::fmt::Display) -> CoreError {
        CoreError::Invalid {
            field: field.to_string(),
            msg: msg.to_string(),
        }
    }

    /// A journal write that failed: a route conflict is the caller's, anything else ours.
    pub fn from_store(e: StoreError) -> CoreError {
        if let StoreError::Route(c) = &e {
            return CoreError::Conflict(c.to_string());
        }
        tracing::error!(error = %e, "state journal write failed; mutation refused");
        CoreError::Internal(format!("could not persist the change: {e}"))
    }
}
