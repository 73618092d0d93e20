//! The slow path's calls into the core: ICE outcomes ([`SessionBinder`]) and DTLS keys
//! ([`KeyBinder`]) become core operations, which journal, write shm and audit.

use super::dtls::KeyBinder;
use super::SessionBinder;
use crate::core::simulcast::StreamLearned;
use crate::core::{Core, CoreError};
use crate::ice::SessionId;
use crate::webrtc::dtls::SrtpKeys;
use std::net::SocketAddr;

impl SessionBinder for Core {
    fn bind_peer(&self, session: SessionId, peer: SocketAddr) -> Result<(), CoreError> {
        Core::bind_peer(self, session, peer)
    }
    fn mark_pending(&self, session: SessionId) -> Result<(), CoreError> {
        Core::mark_pending(self, session)
    }
    fn learn_stream(&self, peer: SocketAddr, header: &[u8]) -> Result<bool, CoreError> {
        let learned = Core::learn_stream(self, peer, header)?;
        match learned {
            StreamLearned::Layer { layer, viewers } => {
                tracing::info!(layer, viewers, "simulcast layer learned from its RID");
            }
            StreamLearned::Rtx { layer, routes } => {
                tracing::info!(
                    layer,
                    routes,
                    "simulcast RTX stream learned from its repaired RID"
                );
            }
            StreamLearned::Ignored => {}
        }
        Ok(learned != StreamLearned::Ignored)
    }
}

impl KeyBinder for Core {
    fn set_keys(&self, session: SessionId, keys: &SrtpKeys) -> Result<(), CoreError> {
        Core::set_keys(self, session, keys)
    }
    fn dtls_failed(&self, session: SessionId, reason: &str) {
        Core::dtls_failed(self, session, reason)
    }
}
