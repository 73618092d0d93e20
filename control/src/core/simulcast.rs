//! WHIP simulcast by RID: learning each layer's SSRC from the publisher's packets.
//!
//! A simulcast offer names its encodings by RID (RFC 8851) and carries no `a=ssrc` lines; the
//! SSRCs appear only in packets, each carrying its RID in the RID header extension (RFC 8852
//! §3.1). The relay reports a publisher's packet on an SSRC no route carries to control
//! (stream-up, `contract::slowpath`): its plain RTP header, at most a handful of SSRCs per
//! session and each at most once a second (relay `engine::index::STREAM_REPORTS`). Here the
//! RID is read, mapped to a layer of the section's negotiated [`Simulcast`], and the layered
//! routes from that SSRC to every viewer of the room are committed (journalled like every
//! route, so both processes keep them across restarts). Viewers that join later get the
//! learned layers' routes with their join (`join::routes_between`).
//!
//! Bounds: one SSRC per layer of each simulcast section (a report for a layer already
//! learned, an unknown RID or no RID is ignored and counted by the slow path); the work per
//! report is one header parse and one scan of the session table.
//!
//! [`Simulcast`]: crate::webrtc::sdp::Simulcast

use super::join::routes_between;
use super::rooms::{LearnedLayer, Member};
use super::{lock, Core, CoreError};
use crate::state::{Entry, LayerSpec, RtxSpec, State, StoredRoute};
use crate::webrtc::sdp::{self, MID_EXTENSION, REPAIRED_RID_EXTENSION, RID_EXTENSION};
use contract::wire::normalize_addr;
use contract::wire::rtp::RtpPacket;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Largest RTP header a report may carry: 12 bytes, 15 CSRCs, 4 + 4·255 bytes of extension
/// block (RFC 3550 §5.3.1 bounds it by the 16-bit length; the relay's datagrams are smaller).
const MAX_REPORT: usize = 2048;

/// What a stream report led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLearned {
    /// A new layer SSRC; routes from it were added to this many viewers.
    Layer { layer: u8, viewers: usize },
    /// A layer's RTX SSRC (its repaired RID); this many routes of the layer now unwrap it.
    Rtx { layer: u8, routes: usize },
    /// Nothing to learn: not a simulcast publisher, no or unknown RID, a layer already known,
    /// or a report that does not parse.
    Ignored,
}

/// The simulcast section and layer a publisher's packet belongs to: the section named by
/// the packet's MID when it carries one, else the only simulcast section; the layer named by
/// its RID, or by its repaired RID (then `true`: the packet is of the layer's RTX stream).
fn layer_of(p: &Member, pkt: &RtpPacket<'_>) -> Option<(usize, u8, bool)> {
    let sections = || {
        p.media
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.simulcast.as_ref().map(|sc| (i, m, sc)))
    };
    let ext = |m: &sdp::NegotiatedMedia, uri: &str| {
        let id = m.extmaps.iter().find(|e| e.uri == uri)?.id;
        pkt.extension_by_id(id)
    };
    let (i, m, sc) = match sections().count() {
        0 => return None,
        1 => sections().next()?,
        _ => sections().find(|(_, m, _)| ext(m, MID_EXTENSION) == Some(m.mid.as_bytes()))?,
    };
    if let Some(rid) = ext(m, RID_EXTENSION) {
        return Some((i, sc.layer_of(rid)?, false));
    }
    let rrid = ext(m, REPAIRED_RID_EXTENSION)?;
    Some((i, sc.layer_of(rrid)?, true))
}

impl Core {
    /// A stream report from the relay: the plain RTP `header` of a packet publisher `peer`
    /// sent on an SSRC no route carries. When it names a layer of one of the publisher's
    /// simulcast sections by RID and that layer has no SSRC yet, the SSRC becomes the layer's
    /// and routes from it go to every viewer of the room.
    pub fn learn_stream(
        &self,
        peer: SocketAddr,
        header: &[u8],
    ) -> Result<StreamLearned, CoreError> {
        if header.len() < 12 || header.len() > MAX_REPORT {
            return Ok(StreamLearned::Ignored);
        }
        // The report is the header alone: a padding flag would point into the missing payload.
        let mut h = header.to_vec();
        h[0] &= !0x20;
        let Ok(pkt) = RtpPacket::parse(&h) else {
            return Ok(StreamLearned::Ignored);
        };
        let ssrc = pkt.ssrc();
        let peer = normalize_addr(peer);
        let mut members = lock(&self.rooms.members);
        let mut g = self.ledger();
        let st = g.store.state();
        let Some(id) = st
            .sessions
            .values()
            .find(|s| normalize_addr(s.peer) == peer && s.role.can_publish())
            .map(|s| s.id)
        else {
            return Ok(StreamLearned::Ignored);
        };
        let Some(p) = members.get(&id).filter(|m| m.publishes) else {
            return Ok(StreamLearned::Ignored);
        };
        let Some((section, layer, repaired)) = layer_of(p, &pkt) else {
            return Ok(StreamLearned::Ignored);
        };
        if p.learned
            .iter()
            .any(|l| l.ssrc == ssrc || l.rtx_ssrc == Some(ssrc))
        {
            return Ok(StreamLearned::Ignored);
        }
        let known = p
            .learned
            .iter()
            .position(|l| l.section == section && l.layer == layer);
        let mut p = p.clone();
        if repaired {
            // The layer's RTX stream: known only once the layer is (the relay reports again).
            let (Some(k), Some(payload_type)) = (
                known.filter(|&k| p.learned[k].rtx_ssrc.is_none()),
                p.media[section]
                    .codecs
                    .iter()
                    .find_map(|c| p.media[section].rtx_for(c.pt)),
            ) else {
                return Ok(StreamLearned::Ignored);
            };
            p.learned[k].rtx_ssrc = Some(ssrc);
            let primary = p.learned[k].ssrc;
            let entries: Vec<Entry> = st
                .routes
                .values()
                .filter(|r| r.from == p.session && r.ssrc == Some(primary))
                .map(|r| {
                    let mut r = r.clone();
                    r.rewrite.source_rtx = Some(RtxSpec { payload_type, ssrc });
                    Entry::PutRoute { route: r }
                })
                .collect();
            let routes = entries.len();
            if !entries.is_empty() {
                g.require_shm()?;
                g.commit(entries)?;
            }
            members.insert(id, p);
            return Ok(StreamLearned::Rtx { layer, routes });
        }
        if known.is_some() {
            return Ok(StreamLearned::Ignored);
        }
        p.learned.push(LearnedLayer {
            section,
            layer,
            ssrc,
            rtx_ssrc: None,
        });
        let mut next_route = st.next_route_id;
        let (entries, viewers) =
            layer_routes(&members, st, &p, section, layer, ssrc, &mut next_route);
        if !entries.is_empty() {
            let shm = g.shm()?;
            let free = (shm.capacity().routes as usize).saturating_sub(shm.route_count());
            if entries.len() > free {
                return Err(CoreError::Unavailable("route table is full".into()));
            }
            g.commit(entries)?;
        }
        members.insert(id, p);
        Ok(StreamLearned::Layer { layer, viewers })
    }
}

/// The routes that bring layer `layer` (SSRC `ssrc`) of simulcast section `section` of
/// publisher `p` (whose `learned` already names it) to every viewer of its room, numbered from
/// `next_route`, and how many viewers they reach. A viewer that a sibling layer of the section
/// already reaches gets the new layer into that route's output (same SSRC, numbering, caps)
/// with its own index; one that none reaches gets the section's learned layers as a joining
/// viewer would; one that already has a route from `ssrc` gets nothing.
pub(super) fn layer_routes(
    members: &BTreeMap<u64, Member>,
    st: &State,
    p: &Member,
    section: usize,
    layer: u8,
    ssrc: u32,
    next_route: &mut u64,
) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut viewers = 0;
    for v in members
        .values()
        .filter(|v| !v.publishes && v.app == p.app && v.room == p.room)
    {
        let into_v = || st.routes.values().filter(|r| r.to == v.session);
        if into_v().any(|r| r.from == p.session && r.ssrc == Some(ssrc)) {
            continue;
        }
        // A layer of this section already reaches the viewer: the new one takes that
        // route's output (same SSRC, numbering, cap) with its own index.
        let sibling = into_v().find(|r| {
            r.from == p.session
                && r.rewrite.layer.is_some()
                && p.learned
                    .iter()
                    .any(|l| l.section == section && Some(l.ssrc) == r.ssrc)
        });
        let planned = match sibling {
            Some(r) => {
                let mut rw = r.rewrite.clone();
                // The sibling's RTX stream is its own; this layer's comes with its
                // repaired RID.
                rw.source_rtx = None;
                rw.layer = rw.layer.map(|l| LayerSpec { index: layer, ..l });
                vec![(Some(ssrc), rw)]
            }
            None => {
                let mut used: Vec<u32> = into_v().filter_map(|r| r.rewrite.ssrc).collect();
                routes_between(p, v, &mut used, Some(section))
            }
        };
        if !planned.is_empty() {
            viewers += 1;
        }
        for (filter, rewrite) in planned {
            entries.push(Entry::PutRoute {
                route: StoredRoute {
                    id: *next_route,
                    from: p.session,
                    ssrc: filter,
                    to: v.session,
                    rewrite,
                },
            });
            *next_route += 1;
        }
    }
    (entries, viewers)
}
