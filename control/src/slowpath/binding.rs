//! The slow path's calls into the core: ICE outcomes ([`SessionBinder`]) and DTLS keys
//! ([`KeyBinder`]) become core operations, which journal, write shm and audit.

use super::dtls::KeyBinder;
use super::SessionBinder;
use crate::core::Core;
use crate::ice::SessionId;
use crate::webrtc::dtls::SrtpKeys;
use std::net::SocketAddr;

impl SessionBinder for Core {
    fn bind_peer(&self, session: SessionId, peer: SocketAddr) -> Result<(), String> {
        Core::bind_peer(self, session, peer).map_err(|e| e.to_string())
    }
    fn mark_pending(&self, session: SessionId) -> Result<(), String> {
        Core::mark_pending(self, session).map_err(|e| e.to_string())
    }
}

impl KeyBinder for Core {
    fn set_keys(&self, session: SessionId, keys: &SrtpKeys) -> Result<(), String> {
        Core::set_keys(self, session, keys).map_err(|e| e.to_string())
    }
    fn dtls_failed(&self, session: SessionId, reason: &str) {
        Core::dtls_failed(self, session, reason)
    }
}
