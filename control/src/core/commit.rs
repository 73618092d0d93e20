//! The persisted state and its mirror in shared memory: every mutation is journalled (fsync)
//! and then written to shm ([`Ledger::commit`]); when control (re)starts, shm is made to hold exactly
//! the persisted state ([`reconcile`]).

use super::CoreError;
use crate::state::{Entry, Store};
use contract::shm::{ShmReader, ShmWriter};

/// The journal with the shm writer and reader (one lock guards all of it).
pub struct Ledger {
    pub store: Store,
    pub shm: Option<ShmWriter>,
    pub reader: Option<ShmReader>,
    /// Why shm is unavailable (when it is).
    pub shm_error: Option<String>,
}

impl Ledger {
    /// Shm's writer, or why there is none.
    pub fn shm(&self) -> Result<&ShmWriter, CoreError> {
        self.shm.as_ref().ok_or_else(|| self.shm_unavailable())
    }

    /// Fail unless shm is open.
    pub fn require_shm(&self) -> Result<(), CoreError> {
        self.shm().map(|_| ())
    }

    pub fn shm_unavailable(&self) -> CoreError {
        CoreError::ShmUnavailable(self.shm_error.as_deref().unwrap_or("not open").to_string())
    }

    /// Journal the entries (fsync), then apply them to shm. The caller checked shm is open.
    pub fn commit(&mut self, entries: Vec<Entry>) -> Result<(), CoreError> {
        self.store.commit(&entries).map_err(CoreError::from_store)?;
        let Some(shm) = self.shm.as_mut() else {
            return Err(CoreError::Unavailable("shared memory unavailable".into()));
        };
        for e in &entries {
            if let Err(m) = apply(shm, e) {
                // Validation and capacity checks run before the journal write, so this means
                // shm itself misbehaves. The state keeps the change; the next reconcile
                // retries it.
                tracing::error!(error = %m, "shm write failed after the journal commit");
                return Err(CoreError::Internal(format!(
                    "shared memory write failed: {m}"
                )));
            }
        }
        Ok(())
    }
}

fn apply(shm: &mut ShmWriter, e: &Entry) -> Result<(), String> {
    match e {
        Entry::PutSession { session } => {
            let rec = session.to_record().map_err(|e| e.to_string())?;
            shm.put_session(&rec).map_err(|e| e.to_string())
        }
        Entry::DelSession { id } => {
            shm.remove_session(*id);
            Ok(())
        }
        Entry::PutRoute { route } => shm.put_route(&route.to_record()).map_err(|e| e.to_string()),
        Entry::DelRoute { id } => {
            shm.remove_route(*id);
            Ok(())
        }
    }
}

/// Make shm hold exactly the persisted state, touching only slots that differ (a running
/// relay keeps forwarding; unchanged sessions keep their SRTP contexts).
pub fn reconcile(w: &mut ShmWriter, store: &Store) {
    let st = store.state();
    let (mut put, mut removed) = (0u32, 0u32);
    for r in w.routes() {
        if !st.routes.contains_key(&r.id) {
            w.remove_route(r.id);
            removed += 1;
        }
    }
    for s in w.sessions() {
        if !st.sessions.contains_key(&s.id) {
            w.remove_session(s.id);
            removed += 1;
        }
    }
    for s in st.sessions.values() {
        match s.to_record() {
            Ok(rec) => {
                if w.session(s.id) != Some(rec) {
                    match w.put_session(&rec) {
                        Ok(()) => put += 1,
                        Err(e) => {
                            tracing::error!(session = s.id, error = %e, "reconcile: session not restored")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(session = s.id, error = %e, "reconcile: persisted session is invalid")
            }
        }
    }
    for r in st.routes.values() {
        let rec = r.to_record();
        if w.route(r.id) != Some(rec) {
            match w.put_route(&rec) {
                Ok(()) => put += 1,
                Err(e) => {
                    tracing::error!(route = r.id, error = %e, "reconcile: route not restored")
                }
            }
        }
    }
    tracing::info!(
        sessions = st.sessions.len(),
        routes = st.routes.len(),
        written = put,
        removed,
        generation = w.generation(),
        "shm reconciled with persisted state"
    );
}
