//! A WebRTC join (WHIP publish or WHEP watch), in named steps: read the offer, open the room,
//! answer the offer (ICE credentials, candidates, DTLS fingerprint), admit the participant
//! under the per-subject and per-room caps, plan its routes to and from the room's other
//! participants, and commit (journal → shm, ICE and DTLS registration, room membership).
//!
//! The session is written `PENDING` with an unbound peer and throw-away keys; see
//! [`super::pending`] for how it leaves that state.

use super::commit::Ledger;
use super::dtls_state::RtcEntry;
use super::rooms::{Member, UNBOUND_PEER};
use super::{lock, Core, CoreError};
use crate::ice::Credentials as IceCredentials;
use crate::secrets;
use crate::state::{
    Entry, KeyframeKind, LayerSpec, MidSpec, RewriteSpec, RtxSpec, StoredIce, StoredRoute,
    StoredSession,
};
use crate::webrtc::dtls::DtlsRole;
use crate::webrtc::sdp::{self, Answer, Endpoint, MediaKind, Offer, Setup, SsrcLimits};
use contract::shm::{session_flags, Role};
use contract::srtp::Profile;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::MutexGuard;

/// Who joins where, as the token check granted it.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    pub app: &'a str,
    pub room: &'a str,
    /// WHIP (true) or WHEP (false).
    pub publish: bool,
    /// The role the token grants.
    pub role: Role,
    /// The hashed identity the per-subject cap counts.
    pub subject: String,
    /// The SDP offer, as received.
    pub offer: &'a [u8],
}

/// A committed join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub session: u64,
    /// The SDP answer.
    pub sdp: String,
    /// The resource path (`DELETE` on it leaves).
    pub location: String,
}

/// The SRTP profile of a session until DTLS negotiates one.
const PLACEHOLDER_PROFILE: Profile = Profile::AeadAes128Gcm;

impl Core {
    /// Join `req.room` at `now_ms`: answer the offer and commit the pending session with
    /// its routes.
    pub fn join(&self, req: JoinRequest<'_>, now_ms: u64) -> Result<Joined, CoreError> {
        // In a cluster, only rooms placed on this node (the HTTP edge forwards the others).
        if let Some(c) = self.room_gate.get() {
            c.admit(req.app, req.room)?;
        }
        let limits = {
            let c = self.config();
            SsrcLimits {
                per_media: c.control.max_ssrcs_per_media as usize,
                per_offer: c.control.max_ssrcs_per_offer as usize,
            }
        };
        let offer = read_offer(req.offer, limits)?;
        if self.is_draining() {
            return Err(CoreError::Unavailable("control is draining".into()));
        }
        self.open_room(req.app, req.room, now_ms)?;
        let mut members = lock(&self.rooms.members);
        let publishers = if req.publish {
            Vec::new()
        } else {
            room_publishers(&members, req.app, req.room)
        };
        let (answer, creds) = self.answer_offer(&offer, req.publish, publishers)?;
        admit(
            &members,
            &req,
            self.config().control.max_sessions_per_subject,
            self.config().control.max_sessions_per_room,
        )?;
        let g = self.ledger();
        let shm = g.shm()?;
        if shm.session_count() >= shm.capacity().sessions as usize {
            return Err(CoreError::Unavailable("session table is full".into()));
        }
        let id = g.store.state().next_session_id;
        let member = Member {
            session: id,
            app: req.app.to_string(),
            room: req.room.to_string(),
            role: req.role,
            publishes: req.publish,
            media: answer.media.clone(),
            primary_ssrcs: offer.media.iter().map(primary_ssrcs).collect(),
            learned: Vec::new(),
            secret: random_hex(16)?,
            subject: req.subject,
            created_ms: now_ms,
        };
        let mut entries = vec![Entry::PutSession {
            session: pending_session(
                id,
                &member,
                now_ms,
                StoredIce {
                    ufrag: creds.ufrag.clone(),
                    pwd: creds.pwd.clone(),
                    remote_ufrag: answer.remote_ufrag.clone(),
                    admin: false,
                },
            )?,
        }];
        entries.extend(plan_routes(&members, &g, &member));
        let shm = g.shm()?;
        let free = shm.capacity().routes as usize - shm.route_count();
        if entries.len() - 1 > free {
            return Err(CoreError::Unavailable("route table is full".into()));
        }
        self.commit_join(g, id, &answer, &creds, entries)?;
        let location = member.location();
        members.insert(id, member);
        Ok(Joined {
            session: id,
            sdp: answer.sdp,
            location,
        })
    }

    /// Commit a join: the ICE credentials registered, the session and its routes journalled
    /// and in shm (the credentials go again when that fails), then the DTLS role from our
    /// answer and the peer's fingerprint in the DTLS table.
    fn commit_join(
        &self,
        mut g: MutexGuard<'_, Ledger>,
        id: u64,
        answer: &Answer,
        creds: &IceCredentials,
        entries: Vec<Entry>,
    ) -> Result<(), CoreError> {
        lock(&self.ice)
            .add_credentials(
                id,
                &creds.ufrag,
                &creds.pwd,
                &answer.remote_ufrag,
                Some(&answer.remote_pwd),
            )
            .map_err(|e| CoreError::BadRequest(format!("ICE credentials: {e}")))?;
        if let Err(e) = g.commit(entries) {
            lock(&self.ice).remove(id);
            return Err(e);
        }
        drop(g);
        let dtls_role = if answer.setup == Setup::Active {
            DtlsRole::Client
        } else {
            DtlsRole::Server
        };
        lock(&self.rtc).insert(
            id,
            RtcEntry::new(dtls_role, answer.remote_fingerprint.clone()),
        );
        Ok(())
    }

    /// Create the room on first use (and persist the registry then).
    fn open_room(&self, app: &str, room: &str, now_ms: u64) -> Result<(), CoreError> {
        let mut a = self.apps();
        let fresh = a.reg.room(app, room).is_none();
        a.reg
            .join_room(app, room, now_ms / 1000)
            .map_err(|e| CoreError::Conflict(e.to_string()))?;
        if fresh {
            a.save()?;
        }
        Ok(())
    }

    /// Our answer: fresh ICE credentials, one host candidate per public address on the
    /// media port, our DTLS fingerprint, and (for a viewer) our SSRC per media section.
    fn answer_offer(
        &self,
        offer: &Offer,
        publish: bool,
        publishers: Vec<sdp::NegotiatedMedia>,
    ) -> Result<(Answer, IceCredentials), CoreError> {
        let creds =
            crate::ice::generate_credentials().map_err(|e| CoreError::Internal(e.to_string()))?;
        // A viewer's media and RTX SSRCs: all distinct within the session (each is its own
        // SRTP stream under the session's key, RFC 3711 §3.2.3).
        let mut send_ssrcs = Vec::new();
        let mut send_rtx_ssrcs = Vec::new();
        if !publish {
            let mut taken: Vec<u32> = Vec::with_capacity(2 * offer.media.len());
            for _ in 0..offer.media.len() {
                send_ssrcs.push(fresh_ssrc(&mut taken)?);
                send_rtx_ssrcs.push(fresh_ssrc(&mut taken)?);
            }
        }
        let cfg = sdp::AnswerConfig {
            ice_ufrag: creds.ufrag.clone(),
            ice_pwd: creds.pwd.clone(),
            fingerprint: self.cert.fingerprint().clone(),
            candidates: self.candidates(),
            tcp_candidates: self.tcp_candidates(),
            session_id: u64::from(random_u32()?),
            send_ssrcs,
            send_rtx_ssrcs,
            cname: format!("sluice-{}", random_hex(6)?),
            publishers,
        };
        let endpoint = if publish {
            Endpoint::Whip
        } else {
            Endpoint::Whep
        };
        let answer = sdp::answer(offer, endpoint, &cfg).map_err(|e| match e {
            sdp::SdpError::NoCodecWithRoom(_) => {
                CoreError::NotAcceptable(format!("SDP offer: {e}"))
            }
            e => CoreError::BadRequest(format!("SDP offer: {e}")),
        })?;
        Ok((answer, creds))
    }

    /// Host candidates: the public addresses, else the relay's bind address (loopback when
    /// it is unspecified), on the media port.
    fn candidates(&self) -> Vec<SocketAddr> {
        let cfg = self.config();
        let bind = cfg.relay.bind;
        let mut candidates: Vec<SocketAddr> = cfg
            .control
            .public_addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, bind.port()))
            .collect();
        if candidates.is_empty() {
            let ip = if bind.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                bind.ip()
            };
            candidates.push(SocketAddr::new(ip, bind.port()));
        }
        candidates
    }

    /// Passive ICE-TCP candidates: the UDP candidates' addresses on the TCP port, when
    /// `relay.tcp` is on.
    fn tcp_candidates(&self) -> Vec<SocketAddr> {
        let cfg = self.config();
        if !cfg.relay.tcp.enabled {
            return Vec::new();
        }
        let port = cfg.relay.tcp.listen_addr(cfg.relay.bind).port();
        self.candidates()
            .into_iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect()
    }
}

/// The accepted media sections of the room's current publishers (WHIP members), in join
/// order.
fn room_publishers(
    members: &BTreeMap<u64, Member>,
    app: &str,
    room: &str,
) -> Vec<sdp::NegotiatedMedia> {
    members
        .values()
        .filter(|m| m.publishes && m.app == app && m.room == room)
        .flat_map(|m| m.media.iter().filter(|s| s.accepted).cloned())
        .collect()
}

fn read_offer(body: &[u8], limits: SsrcLimits) -> Result<Offer, CoreError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| CoreError::BadRequest("the SDP offer is not UTF-8".into()))?;
    Offer::parse_with(text, limits).map_err(|e| CoreError::BadRequest(format!("SDP offer: {e}")))
}

/// The per-subject and per-room caps on concurrent sessions.
fn admit(
    members: &BTreeMap<u64, Member>,
    req: &JoinRequest<'_>,
    max_per_subject: u32,
    max_per_room: u32,
) -> Result<(), CoreError> {
    let (mut room_n, mut subject_n) = (0u32, 0u32);
    for m in members
        .values()
        .filter(|m| m.app == req.app && m.room == req.room)
    {
        room_n += 1;
        subject_n += u32::from(m.subject == req.subject);
    }
    if subject_n >= max_per_subject {
        return Err(CoreError::TooManySessions(subject_n));
    }
    if room_n >= max_per_room {
        return Err(CoreError::RoomFull(room_n));
    }
    Ok(())
}

/// The session a join writes: unbound, PENDING, throw-away keys, the ICE credentials the relay
/// answers checks with; a WHEP session never publishes. A publisher whose answer kept the
/// transport-wide sequence extension carries its id in the flags: the relay sends it
/// transport-cc feedback (docs/ENGINE.md "Bandwidth estimation"); one that took REMB instead
/// carries its abs-send-time id: the relay sends it REMB.
fn pending_session(
    id: u64,
    m: &Member,
    now_ms: u64,
    ice: StoredIce,
) -> Result<StoredSession, CoreError> {
    let role = if m.publishes { m.role } else { Role::Viewer };
    // One id for the bundle (RFC 8285 §6: the offerer uses one mapping per transport).
    let twcc = (m.media.iter())
        .filter(|x| m.publishes && x.accepted)
        .find_map(|x| x.twcc_id());
    // Without transport-cc, a publisher that took REMB: the relay estimates from its
    // abs-send-time and sends it REMB.
    let remb = (m.media.iter())
        .filter(|x| m.publishes && x.accepted && twcc.is_none())
        .find_map(|x| x.remb_abs_send_time_id());
    let flags = session_flags::with_twcc_id(session_flags::PENDING, twcc);
    Ok(StoredSession {
        id,
        peer: UNBOUND_PEER,
        profile: PLACEHOLDER_PROFILE,
        role,
        rx_key: throwaway_key(PLACEHOLDER_PROFILE)?,
        tx_key: throwaway_key(PLACEHOLDER_PROFILE)?,
        key_epoch: 0,
        flags: session_flags::with_abs_send_time_id(flags, remb),
        max_pps: 0,
        created_unix_ms: now_ms,
        ice: Some(ice),
    })
}

/// Routes between the new member and the room's members on the other side, with ids from
/// the next free one. A new viewer fills its sections from the publishers in join order; a
/// new publisher takes, per viewer, sections no other publisher feeds.
pub(super) fn plan_routes(members: &BTreeMap<u64, Member>, g: &Ledger, new: &Member) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut next_route = g.store.state().next_route_id;
    let mut used_by_new_viewer = Vec::new();
    for other in members.values() {
        if other.app != new.app || other.room != new.room || other.publishes == new.publishes {
            continue;
        }
        let mut used_in_viewer: Vec<u32> = g
            .store
            .state()
            .routes
            .values()
            .filter(|r| r.to == other.session)
            .filter_map(|r| r.rewrite.ssrc)
            .collect();
        let (p, v, used) = if new.publishes {
            (new, other, &mut used_in_viewer)
        } else {
            (other, new, &mut used_by_new_viewer)
        };
        for (ssrc, rewrite) in routes_between(p, v, used, None) {
            entries.push(Entry::PutRoute {
                route: StoredRoute {
                    id: next_route,
                    from: p.session,
                    ssrc,
                    to: v.session,
                    rewrite,
                },
            });
            next_route += 1;
        }
    }
    entries
}

/// Routes from publisher `p` to viewer `v`. Each accepted publisher section takes the first
/// accepted viewer section of the same kind whose SSRC (announced in the viewer's answer) is
/// not in `used` — sections already fed by another publisher — and marks it used; so a
/// viewer that offers two video sections sees two publishers, in join order. One route per
/// primary SSRC (or one any-SSRC route when the publisher announced none), rewriting the
/// SSRC to the viewer section's, with payload types and extension ids mapped. A simulcast
/// section (WHIP, RIDs) has one layered route per layer SSRC learned so far, all to the one
/// viewer section (docs/ENGINE.md "Simulcast"), and no any-SSRC route: its layers' SSRCs are
/// learned from their packets (core/simulcast.rs). `only`: just that publisher section.
pub(super) fn routes_between(
    p: &Member,
    v: &Member,
    used: &mut Vec<u32>,
    only: Option<usize>,
) -> Vec<(Option<u32>, RewriteSpec)> {
    let mut out = Vec::new();
    for (i, pm) in p.media.iter().enumerate() {
        if !pm.accepted || !matches!(pm.kind, MediaKind::Audio | MediaKind::Video) {
            continue;
        }
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let Some(vm) = v.media.iter().find(|m| {
            m.accepted
                && m.kind == pm.kind
                && m.send_ssrc.is_some_and(|s| !used.contains(&s))
                && !sdp::pt_map(&pm.codecs, &m.codecs).is_empty()
        }) else {
            continue;
        };
        if let Some(s) = vm.send_ssrc {
            used.push(s);
        }
        let pt_map: Vec<[u8; 2]> = sdp::pt_map(&pm.codecs, &vm.codecs)
            .into_iter()
            .take(contract::shm::MAX_MAPPINGS)
            .map(|(a, b)| [a, b])
            .collect();
        if pt_map.is_empty() {
            continue;
        }
        let ext_map: Vec<[u8; 2]> = sdp::ext_map(&pm.extmaps, &vm.extmaps)
            .into_iter()
            .filter(|(a, b)| (1..=14).contains(a) && (1..=14).contains(b))
            .take(contract::shm::MAX_MAPPINGS)
            .map(|(a, b)| [a, b])
            .collect();
        // The viewer's id for the transport-wide extension, when the publisher's element
        // reaches it (mapped): the relay renumbers it per viewer.
        let twcc_id = vm
            .twcc_id()
            .filter(|id| ext_map.iter().any(|[_, to]| to == id));
        let rw = RewriteSpec {
            ssrc: vm.send_ssrc,
            pt_map: pt_map.clone(),
            ext_map,
            mid: viewer_mid(vm),
            keyframe: publisher_keyframe(pm),
            rtx: viewer_rtx(vm, &pt_map),
            source_rtx: None,
            twcc_id,
            layer: None,
            dd_id: None,
        };
        if let Some(sc) = &pm.simulcast {
            let count = sc.layers.len() as u8;
            for l in p.learned.iter().filter(|l| l.section == i) {
                let source_rtx = l.rtx_ssrc.and_then(|ssrc| {
                    let payload_type = pm.codecs.iter().find_map(|c| pm.rtx_for(c.pt))?;
                    Some(RtxSpec { payload_type, ssrc })
                });
                out.push((
                    Some(l.ssrc),
                    RewriteSpec {
                        source_rtx,
                        layer: Some(LayerSpec {
                            index: l.layer,
                            count,
                            max: None,
                            max_temporal: None,
                        }),
                        ..rw.clone()
                    },
                ));
            }
            continue;
        }
        let ssrcs = p.primary_ssrcs.get(i).cloned().unwrap_or_default();
        // A video section whose publisher sends the Dependency Descriptor is forwarded as SVC
        // (docs/ENGINE.md "SVC"): per viewer the frames of the decode target its caps select,
        // capped like a simulcast source through the same layer caps.
        let rw = match pm.dd_id() {
            Some(id) if pm.kind == MediaKind::Video && !ssrcs.is_empty() => RewriteSpec {
                layer: Some(LayerSpec {
                    index: 0,
                    count: 1,
                    max: None,
                    max_temporal: None,
                }),
                dd_id: Some(id),
                ..rw
            },
            _ => rw,
        };
        if ssrcs.is_empty() {
            out.push((None, rw));
        } else {
            for s in ssrcs {
                let source_rtx = pm
                    .source_rtx_of(s)
                    .map(|(payload_type, ssrc)| RtxSpec { payload_type, ssrc });
                out.push((
                    Some(s),
                    RewriteSpec {
                        source_rtx,
                        ..rw.clone()
                    },
                ));
            }
        }
    }
    out
}

/// The viewer's RTX stream for a route (RFC 4588): our RTX SSRC of the viewer section and the
/// viewer's RTX payload type bound to the forwarded codec, the publisher's first codec the
/// viewer takes (the first pair of `pt_map`, in the publisher's order of preference, which is
/// what a sender uses). `None` when the viewer accepted no RTX for that codec: NACKs are then
/// answered with the original packet.
fn viewer_rtx(vm: &sdp::NegotiatedMedia, pt_map: &[[u8; 2]]) -> Option<RtxSpec> {
    let ssrc = vm.send_rtx_ssrc?;
    let [_, viewer_pt] = *pt_map.first()?;
    let payload_type = vm.rtx_for(viewer_pt)?;
    Some(RtxSpec { payload_type, ssrc })
}

/// The keyframe requests the publisher section negotiated on any of its codecs.
pub(crate) fn publisher_keyframe(pm: &sdp::NegotiatedMedia) -> Vec<KeyframeKind> {
    let has = |fb: &str| pm.codecs.iter().any(|c| c.rtcp_fb.iter().any(|f| f == fb));
    let mut k = Vec::new();
    if has("nack pli") {
        k.push(KeyframeKind::Pli);
    }
    if has("ccm fir") {
        k.push(KeyframeKind::Fir);
    }
    k
}

/// The viewer section's own MID, written into the MID element of every packet forwarded to
/// it (RFC 8843 §15): receivers pick the transceiver by it, so the publisher's value would
/// land audio in a video receiver whenever the two orders of m-lines differ. `None` when the
/// viewer did not negotiate the extension (it demuxes by the SSRC our answer announced).
fn viewer_mid(vm: &sdp::NegotiatedMedia) -> Option<MidSpec> {
    let e = vm.extmaps.iter().find(|e| e.uri == sdp::MID_EXTENSION)?;
    MidSpec::valid_value(&vm.mid).then(|| MidSpec {
        id: e.id,
        value: vm.mid.clone(),
    })
}

fn primary_ssrcs(m: &sdp::Media) -> Vec<u32> {
    let secondary: Vec<u32> = m
        .ssrc_groups
        .iter()
        .filter(|g| g.semantics == "FID" || g.semantics == "FEC-FR")
        .flat_map(|g| g.ssrcs.iter().skip(1).copied())
        .collect();
    m.ssrc_list()
        .into_iter()
        .filter(|s| !secondary.contains(s))
        .collect()
}

fn random_err(e: std::io::Error) -> CoreError {
    CoreError::Internal(format!("random: {e}"))
}

/// A random SSRC not in `taken`, then added to it.
fn fresh_ssrc(taken: &mut Vec<u32>) -> Result<u32, CoreError> {
    loop {
        let s = random_u32()?;
        if !taken.contains(&s) {
            taken.push(s);
            return Ok(s);
        }
    }
}

fn random_u32() -> Result<u32, CoreError> {
    let b = secrets::random_bytes(4).map_err(random_err)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1)
}

/// `n` random bytes in hex (resource secrets, CNAMEs, generated token subjects).
pub fn random_hex(n: usize) -> Result<String, CoreError> {
    let b = secrets::random_bytes(n).map_err(random_err)?;
    Ok(secrets::hex(&b))
}

/// Random key material for `p` (a pending session's keys until DTLS produces real ones).
fn throwaway_key(p: Profile) -> Result<Vec<u8>, CoreError> {
    secrets::random_bytes(p.key_material_len()).map_err(random_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::dtls::Fingerprint;

    const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

    /// One video section: `dir`, the codec lines, then `extra` lines.
    fn offer(dir: &str, codecs: &str, extra: &str) -> Offer {
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=fingerprint:{FP}\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na={dir}\r\n{codecs}{extra}"
        );
        Offer::parse(&sdp).unwrap()
    }

    fn member(
        session: u64,
        publishes: bool,
        o: &Offer,
        publishers: Vec<sdp::NegotiatedMedia>,
    ) -> Member {
        let cfg = sdp::AnswerConfig {
            ice_ufrag: "sluiceUF".into(),
            ice_pwd: "sluicepasswordsluicepass".into(),
            fingerprint: Fingerprint::parse(FP).unwrap(),
            candidates: vec!["127.0.0.1:3478".parse().unwrap()],
            tcp_candidates: Vec::new(),
            session_id: 1,
            send_ssrcs: vec![0x5000],
            send_rtx_ssrcs: vec![0x5001],
            cname: "sluice".into(),
            publishers,
        };
        let endpoint = if publishes {
            Endpoint::Whip
        } else {
            Endpoint::Whep
        };
        let a = sdp::answer(o, endpoint, &cfg).unwrap();
        Member {
            session,
            app: "a".into(),
            room: "r".into(),
            role: if publishes { Role::Host } else { Role::Viewer },
            publishes,
            media: a.media,
            primary_ssrcs: o.media.iter().map(primary_ssrcs).collect(),
            learned: Vec::new(),
            secret: String::new(),
            subject: String::new(),
            created_ms: 0,
        }
    }

    const TWCC: &str =
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
    const PUB_RTX: &str = "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
    const PUB_SSRCS: &str =
        "a=ssrc-group:FID 1111 2222\r\na=ssrc:1111 cname:x\r\na=ssrc:2222 cname:x\r\n";

    /// A Chromium-like publisher (VP8 96, RTX 97, FID 1111/2222, transport-wide id 3) and a
    /// viewer with other numbers (VP8 120, RTX 124, transport-wide id 9): the route carries
    /// the publisher's RTX stream, the viewer's RTX stream bound to its own VP8, and the
    /// viewer's transport-wide id.
    #[test]
    fn routes_carry_rtx_source_rtx_and_twcc() {
        let p = member(
            1,
            true,
            &offer("sendonly", PUB_RTX, &format!("{TWCC}{PUB_SSRCS}")),
            Vec::new(),
        );
        let view = "a=rtpmap:120 VP8/90000\r\na=rtcp-fb:120 nack\r\na=rtcp-fb:120 transport-cc\r\n\
a=rtpmap:124 rtx/90000\r\na=fmtp:124 apt=120\r\n\
a=extmap:9 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n";
        let v = member(2, false, &offer("recvonly", view, ""), p.media.clone());
        let routes = routes_between(&p, &v, &mut Vec::new(), None);
        assert_eq!(
            routes.len(),
            1,
            "one route for the primary SSRC, none for its RTX"
        );
        let (ssrc, rw) = &routes[0];
        assert_eq!(*ssrc, Some(1111));
        assert_eq!(rw.ssrc, Some(0x5000));
        assert_eq!(rw.pt_map, [[96, 120]]);
        // The publisher's transport-wide element (id 3) maps to the viewer's id, which the
        // relay renumbers per viewer.
        assert!(rw.ext_map.contains(&[3, 9]));
        assert_eq!(rw.twcc_id, Some(9));
        assert_eq!(
            rw.rtx,
            Some(RtxSpec {
                payload_type: 124,
                ssrc: 0x5001
            })
        );
        assert_eq!(
            rw.source_rtx,
            Some(RtxSpec {
                payload_type: 97,
                ssrc: 2222
            })
        );
        // In shm: the route word the relay reads.
        let shm = rw.to_rewrite();
        assert_eq!(shm.twcc_id, 9);
        // The publisher's session names its id, so the relay sends it transport-cc feedback;
        // a viewer's names none.
        let ice = || StoredIce {
            ufrag: "u".into(),
            pwd: "p".into(),
            remote_ufrag: "r".into(),
            admin: false,
        };
        let ps = pending_session(1, &p, 0, ice()).unwrap();
        assert_eq!(session_flags::twcc_id(ps.flags), Some(3));
        assert_ne!(ps.flags & session_flags::PENDING, 0);
        let vs = pending_session(2, &v, 0, ice()).unwrap();
        assert_eq!(session_flags::twcc_id(vs.flags), None);
        assert_eq!(
            shm.rtx.map(|x| (x.payload_type, x.ssrc)),
            Some((124, 0x5001))
        );
        assert_eq!(
            shm.source_rtx.map(|x| (x.payload_type, x.ssrc)),
            Some((97, 2222))
        );
    }

    /// Neither side with RTX or the transport-wide extension (aiortc's offers): plain routes,
    /// as before; a publisher without `a=ssrc` lines gets an any-SSRC route, its RTX is
    /// declined and the route has no `source_rtx`.
    #[test]
    fn routes_without_rtx_or_ssrcs() {
        let plain = "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\n";
        let p = member(
            1,
            true,
            &offer("sendonly", plain, "a=ssrc:1111 cname:x\r\n"),
            Vec::new(),
        );
        let v = member(2, false, &offer("recvonly", plain, ""), p.media.clone());
        let routes = routes_between(&p, &v, &mut Vec::new(), None);
        assert_eq!(routes.len(), 1);
        let rw = &routes[0].1;
        assert_eq!((rw.rtx, rw.source_rtx, rw.twcc_id), (None, None, None));

        let p = member(1, true, &offer("sendonly", PUB_RTX, TWCC), Vec::new());
        let view = "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
        let v = member(2, false, &offer("recvonly", view, ""), p.media.clone());
        let routes = routes_between(&p, &v, &mut Vec::new(), None);
        assert_eq!(routes.len(), 1);
        let (ssrc, rw) = &routes[0];
        assert_eq!(*ssrc, None, "no a=ssrc lines: one any-SSRC route");
        assert!(p.media[0].rtx.is_empty(), "RTX declined without FID");
        assert_eq!(rw.source_rtx, None);
        assert_eq!(rw.twcc_id, None, "the viewer did not offer the extension");
        assert_eq!(
            rw.rtx,
            Some(RtxSpec {
                payload_type: 97,
                ssrc: 0x5001
            }),
            "the viewer's own RTX still answers its NACKs (the route has a rewritten SSRC)"
        );
    }
}
