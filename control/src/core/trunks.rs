//! The core's side of a cluster trunk on an edge node (docs/CLUSTER.md "Cascade"): a room
//! served from a trunk has a publisher-like member whose session is the trunk's static
//! session and whose media sections describe the streams the origin sends on it. Local
//! viewers join the room as they would join a room with a local publisher; their routes come
//! from the trunk session.
//!
//! A trunk's member is keyed in the members map by an id at or above [`TRUNK_MEMBER_BASE`]
//! (one per room served), not by its session id: one trunk session between two relays
//! carries every room the edge takes from that origin.

use super::join::plan_routes;
use super::rooms::Member;
use super::{lock, Core, CoreError};
use crate::webrtc::sdp::NegotiatedMedia;
use contract::shm::Role;

/// Member keys of trunk rooms start here (session ids never reach it).
pub const TRUNK_MEMBER_BASE: u64 = 1 << 62;

impl Core {
    /// Put the member of trunk room `key` (session `session`, `app`/`room`) with the streams
    /// `media` and their SSRCs `primary_ssrcs`. When the member already exists, the streams
    /// it did not have yet are routed into the room's current viewers (sections no other
    /// stream feeds, as a new local publisher is). Returns the number of routes added.
    #[allow(clippy::too_many_arguments)]
    pub fn put_trunk_member(
        &self,
        key: u64,
        session: u64,
        app: &str,
        room: &str,
        media: Vec<NegotiatedMedia>,
        primary_ssrcs: Vec<Vec<u32>>,
        now_ms: u64,
    ) -> Result<usize, CoreError> {
        if key < TRUNK_MEMBER_BASE {
            return Err(CoreError::Internal(format!(
                "trunk member key {key} is below the trunk range"
            )));
        }
        let mut members = lock(&self.rooms.members);
        let old_ssrcs: Vec<u32> = members
            .get(&key)
            .map(|m| m.primary_ssrcs.iter().flatten().copied().collect())
            .unwrap_or_default();
        let member = Member {
            session,
            app: app.to_string(),
            room: room.to_string(),
            role: Role::Trunk,
            publishes: true,
            media,
            primary_ssrcs,
            // A trunk carries the origin's announced streams; simulcast layers learned from
            // RIDs on the origin are not carried (docs/CLUSTER.md).
            learned: Vec::new(),
            secret: super::join::random_hex(16)?,
            subject: format!("trunk-{session}"),
            created_ms: now_ms,
        };
        // The streams new to this member, alone: routed like a publisher joining now.
        let delta = Member {
            primary_ssrcs: member
                .primary_ssrcs
                .iter()
                .map(|s| {
                    s.iter()
                        .copied()
                        .filter(|x| !old_ssrcs.contains(x))
                        .collect()
                })
                .collect(),
            ..member.clone()
        };
        let mut added = 0;
        if members.contains_key(&key) && delta.primary_ssrcs.iter().any(|s| !s.is_empty()) {
            let mut delta = delta;
            for (m, s) in delta.media.iter_mut().zip(&delta.primary_ssrcs) {
                m.accepted &= !s.is_empty();
            }
            let g = self.ledger();
            let entries = plan_routes(&members, &g, &delta);
            if !entries.is_empty() {
                let shm = g.shm()?;
                let free = shm.capacity().routes as usize - shm.route_count();
                if entries.len() > free {
                    return Err(CoreError::Unavailable("route table is full".into()));
                }
                added = entries.len();
                let mut g = g;
                g.commit(entries)?;
            }
        }
        members.insert(key, member);
        Ok(added)
    }

    /// Forget trunk room `key` (its viewers are removed by the caller, with their routes).
    pub fn remove_trunk_member(&self, key: u64) {
        lock(&self.rooms.members).remove(&key);
    }

    /// The local viewers (WHEP members) of `app`/`room`.
    pub fn viewers_of(&self, app: &str, room: &str) -> Vec<u64> {
        lock(&self.rooms.members)
            .values()
            .filter(|m| !m.publishes && m.app == app && m.room == room)
            .map(|m| m.session)
            .collect()
    }
}
