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
use super::rooms::{LearnedLayer, Member};
use super::simulcast::layer_routes;
use super::{lock, Core, CoreError};
use crate::webrtc::sdp::NegotiatedMedia;
use contract::shm::Role;

/// Member keys of trunk rooms start here (session ids never reach it).
pub const TRUNK_MEMBER_BASE: u64 = 1 << 62;

/// What a trunk room's member announces: its media sections, per section the SSRCs of the
/// streams it carries, and the simulcast layers of its simulcast sections (the origin learned
/// them from the publisher's RIDs; on the trunk each layer is a stream of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkMedia {
    pub media: Vec<NegotiatedMedia>,
    pub primary_ssrcs: Vec<Vec<u32>>,
    pub learned: Vec<LearnedLayer>,
}

impl Core {
    /// Put the member of trunk room `key` (session `session`, `app`/`room`) with the streams
    /// of `m`. When the member already exists, the streams it did not have yet are routed
    /// into the room's current viewers: a new stream to sections no other stream feeds, as a
    /// new local publisher's; a new simulcast layer into the output its section's other
    /// layers already feed, as a layer learned from a local publisher's RID
    /// (core/simulcast.rs). Returns the number of routes added.
    pub fn put_trunk_member(
        &self,
        key: u64,
        session: u64,
        (app, room): (&str, &str),
        m: TrunkMedia,
        now_ms: u64,
    ) -> Result<usize, CoreError> {
        if key < TRUNK_MEMBER_BASE {
            return Err(CoreError::Internal(format!(
                "trunk member key {key} is below the trunk range"
            )));
        }
        let mut members = lock(&self.rooms.members);
        let (old_ssrcs, old_layers): (Vec<u32>, Vec<u32>) = members
            .get(&key)
            .map(|m| {
                (
                    m.primary_ssrcs.iter().flatten().copied().collect(),
                    m.learned.iter().map(|l| l.ssrc).collect(),
                )
            })
            .unwrap_or_default();
        let existed = members.contains_key(&key);
        let new_layers: Vec<LearnedLayer> = m
            .learned
            .iter()
            .filter(|l| !old_layers.contains(&l.ssrc))
            .copied()
            .collect();
        let member = Member {
            session,
            app: app.to_string(),
            room: room.to_string(),
            role: Role::Trunk,
            publishes: true,
            media: m.media,
            primary_ssrcs: m.primary_ssrcs,
            learned: m.learned,
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
            learned: Vec::new(),
            ..member.clone()
        };
        let mut added = 0;
        if existed && delta.primary_ssrcs.iter().any(|s| !s.is_empty()) {
            let mut delta = delta;
            for (m, s) in delta.media.iter_mut().zip(&delta.primary_ssrcs) {
                // Simulcast sections carry no primary SSRC: their layers come below.
                m.accepted &= !s.is_empty() && m.simulcast.is_none();
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
        if existed {
            // One layer at a time, each committed before the next: a viewer that no layer of
            // the section reached yet gets the section's layers from the first, the next ones
            // find its output through their siblings.
            let mut g = self.ledger();
            for l in &new_layers {
                let st = g.store.state();
                let mut next_route = st.next_route_id;
                let (entries, _) = layer_routes(
                    &members,
                    st,
                    &member,
                    l.section,
                    l.layer,
                    l.ssrc,
                    &mut next_route,
                );
                if entries.is_empty() {
                    continue;
                }
                let shm = g.shm()?;
                let free = (shm.capacity().routes as usize).saturating_sub(shm.route_count());
                if entries.len() > free {
                    return Err(CoreError::Unavailable("route table is full".into()));
                }
                added += entries.len();
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
