//! SDP offer parsing and WHIP/WHEP answers (RFC 8866, RFC 8829 JSEP, RFC 8843 BUNDLE,
//! RFC 8839 ICE attributes, RFC 8122 / RFC 5763 fingerprint and setup, RFC 8285 extmap).
//!
//! Owns: the typed view of an offer, the answer we produce as an ICE-lite, BUNDLE-only,
//! rtcp-mux-only endpoint, codec and header-extension selection, and the publisher→viewer
//! payload-type / extension-id maps the relay's route rewrite uses.
//! May not touch: sockets, DTLS state, tokens, shared memory. Parsing never panics: every
//! refusal is an [`SdpError`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::dtls::Fingerprint;

/// Offers larger than this are refused before parsing.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Media sections we look at; more is refused.
pub const MAX_MEDIA: usize = 64;
/// SSRCs one media section may announce: a stream, its RTX and FEC, up to three simulcast
/// layers of each stay below it. Every SSRC becomes routes for each viewer, so this bounds the
/// work one join costs.
pub const MAX_SSRCS_PER_MEDIA: usize = 8;
/// SSRCs one offer may announce in all.
pub const MAX_SSRCS_PER_OFFER: usize = 16;
/// `a=ssrc` lines one media section may hold (several attributes per SSRC).
pub const MAX_SSRC_LINES_PER_MEDIA: usize = 64;

/// How many SSRCs an offer may announce (`control.max_ssrcs_per_media`,
/// `control.max_ssrcs_per_offer`; defaults [`MAX_SSRCS_PER_MEDIA`], [`MAX_SSRCS_PER_OFFER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsrcLimits {
    pub per_media: usize,
    pub per_offer: usize,
}

impl Default for SsrcLimits {
    fn default() -> Self {
        SsrcLimits {
            per_media: MAX_SSRCS_PER_MEDIA,
            per_offer: MAX_SSRCS_PER_OFFER,
        }
    }
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP too large")]
    TooLarge,
    #[error("SDP line {line}: {reason}")]
    BadLine { line: usize, reason: &'static str },
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("SDP has no media section")]
    NoMedia,
    #[error("SDP has too many media sections")]
    TooManyMedia,
    /// More SSRCs than a real client sends: at most [`MAX_SSRCS_PER_MEDIA`] per media section
    /// and [`MAX_SSRCS_PER_OFFER`] per offer, [`MAX_SSRC_LINES_PER_MEDIA`] `a=ssrc` lines.
    #[error("offer has too many SSRCs ({0})")]
    TooManySsrcs(&'static str),
    #[error("offer has no BUNDLE group (bundle is required)")]
    NoBundle,
    #[error("media section {0:?} lacks a=rtcp-mux (required)")]
    NoRtcpMux(String),
    #[error("media section {0} has no a=mid")]
    NoMid(usize),
    #[error("media section {0:?} has no ICE credentials")]
    NoIceCredentials(String),
    #[error("media section {0:?} has no usable a=fingerprint")]
    NoFingerprint(String),
    #[error("media section {0:?} has a=setup:holdconn or no usable setup")]
    BadSetup(String),
    #[error("bundled media sections disagree on ICE credentials, fingerprint or setup")]
    BundleMismatch,
    #[error("no media section can be accepted (no common codec or direction)")]
    NothingAccepted,
    /// WHEP: the room has publishers, and the viewer's offer shares no codec with what they
    /// send (`kinds`: what the room carries, e.g. "video: VP8/90000").
    #[error("the offer shares no codec with what the room's publishers send ({0})")]
    NoCodecWithRoom(String),
    /// A simulcast description (RFC 8851 `a=rid`, RFC 8853 `a=simulcast`) the relay cannot
    /// take: malformed, more than [`MAX_SIMULCAST_LAYERS`] streams, or naming a RID without
    /// its `a=rid` line.
    #[error("media section {mid:?}: {reason}")]
    Simulcast { mid: String, reason: &'static str },
}

fn bad(line: usize, reason: &'static str) -> SdpError {
    SdpError::BadLine { line, reason }
}

/// `a=setup` (RFC 4145 §4, RFC 5763 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    fn parse(s: &str) -> Option<Setup> {
        Some(match s {
            "active" => Setup::Active,
            "passive" => Setup::Passive,
            "actpass" => Setup::ActPass,
            "holdconn" => Setup::HoldConn,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }
}

/// Media direction (RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }
    pub const fn name(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
    const fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    const fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One payload type: `a=rtpmap`, `a=fmtp`, `a=rtcp-fb` (RFC 8866 §6.6, RFC 4585 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub pt: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
    pub fmtp: Option<String>,
    pub rtcp_fb: Vec<String>,
}

impl Codec {
    /// fmtp parameters as `key → value` (keys lower-cased).
    pub fn params(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Some(f) = &self.fmtp {
            for kv in f.split(';') {
                let kv = kv.trim();
                if let Some((k, v)) = kv.split_once('=') {
                    m.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
        }
        m
    }
}

/// `a=extmap` (RFC 8285 §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extmap {
    pub id: u8,
    pub direction: Option<Direction>,
    pub uri: String,
}

/// `a=ssrc-group` (RFC 5576 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrcGroup {
    pub semantics: String,
    pub ssrcs: Vec<u32>,
}

/// `m=` kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    Application,
    Other(String),
}

impl MediaKind {
    fn parse(s: &str) -> MediaKind {
        match s {
            "audio" => MediaKind::Audio,
            "video" => MediaKind::Video,
            "application" => MediaKind::Application,
            o => MediaKind::Other(o.to_owned()),
        }
    }
    pub fn name(&self) -> &str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
            MediaKind::Application => "application",
            MediaKind::Other(s) => s,
        }
    }
}

/// One media section of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaKind,
    pub port: u16,
    pub proto: String,
    pub fmts: Vec<String>,
    pub mid: Option<String>,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    pub rtcp_mux: bool,
    pub rtcp_rsize: bool,
    pub direction: Direction,
    pub codecs: Vec<Codec>,
    pub extmaps: Vec<Extmap>,
    /// `a=ssrc:<ssrc> <attribute>[:<value>]` lines (RFC 5576 §4.1), as `(ssrc, attribute)`.
    pub ssrcs: Vec<(u32, String)>,
    pub ssrc_groups: Vec<SsrcGroup>,
    pub msid: Option<String>,
    /// `a=rid` values and the `a=simulcast` value, verbatim; [`Simulcast::negotiate`] reads
    /// them when the section is answered.
    pub rids: Vec<String>,
    pub simulcast: Option<String>,
}

impl Media {
    /// Distinct SSRCs the offerer announced.
    /// How many different SSRCs the `a=ssrc` lines name.
    pub fn distinct_ssrcs(&self) -> usize {
        let mut v: Vec<u32> = self.ssrcs.iter().map(|(s, _)| *s).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    }

    /// The SSRCs the `a=ssrc` lines name, each once, in order of first appearance.
    pub fn ssrc_list(&self) -> Vec<u32> {
        let mut v: Vec<u32> = Vec::new();
        for (s, _) in &self.ssrcs {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }
}

/// A parsed offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    pub ice_lite: bool,
    /// `a=extmap-allow-mixed` (RFC 8285 §6): the offerer may send and take the two-byte
    /// header extension form. Chromium sends the Dependency Descriptor of a key frame (its
    /// template structure, longer than 16 bytes) only when the answer allows it.
    pub extmap_allow_mixed: bool,
    /// Mids of the first BUNDLE group (RFC 8843 §7).
    pub bundle: Option<Vec<String>>,
    pub media: Vec<Media>,
}

fn parse_u<T: std::str::FromStr>(
    s: &str,
    line: usize,
    reason: &'static str,
) -> Result<T, SdpError> {
    s.parse().map_err(|_| bad(line, reason))
}

fn ice_char_ok(s: &str) -> bool {
    // RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl Offer {
    /// Parse an SDP offer. Unknown lines and attributes are ignored (RFC 8866 §5).
    /// [`Offer::parse_with`] the default SSRC limits.
    pub fn parse(sdp: &str) -> Result<Offer, SdpError> {
        Offer::parse_with(sdp, SsrcLimits::default())
    }

    /// Parse an offer, refusing more SSRCs than `limits` allow.
    pub fn parse_with(sdp: &str, limits: SsrcLimits) -> Result<Offer, SdpError> {
        if sdp.len() > MAX_SDP_LEN {
            return Err(SdpError::TooLarge);
        }
        let mut offer = Offer {
            ice_ufrag: None,
            ice_pwd: None,
            fingerprint: None,
            setup: None,
            ice_lite: false,
            extmap_allow_mixed: false,
            bundle: None,
            media: Vec::new(),
        };
        let mut saw_version = false;
        for (i, raw) in sdp.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.is_empty() {
                continue;
            }
            let (t, value) = match line.as_bytes() {
                [t, b'=', ..] => (*t, &line[2..]),
                _ => return Err(bad(n, "not <type>=<value>")),
            };
            if !saw_version {
                if t != b'v' || value != "0" {
                    return Err(SdpError::NoVersion);
                }
                saw_version = true;
                continue;
            }
            match t {
                b'm' => {
                    if offer.media.len() >= MAX_MEDIA {
                        return Err(SdpError::TooManyMedia);
                    }
                    offer.media.push(parse_m(value, n)?);
                }
                b'a' => {
                    let (name, val) = match value.split_once(':') {
                        Some((a, b)) => (a, Some(b)),
                        None => (value, None),
                    };
                    match offer.media.last_mut() {
                        Some(m) => media_attr(m, name, val, n, limits.per_media)?,
                        None => session_attr(&mut offer, name, val, n)?,
                    }
                }
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::NoVersion);
        }
        if offer.media.is_empty() {
            return Err(SdpError::NoMedia);
        }
        let total: usize = offer.media.iter().map(Media::distinct_ssrcs).sum();
        if total > limits.per_offer {
            return Err(SdpError::TooManySsrcs("in the offer"));
        }
        Ok(offer)
    }

    fn ufrag<'a>(&'a self, m: &'a Media) -> Option<&'a str> {
        m.ice_ufrag.as_deref().or(self.ice_ufrag.as_deref())
    }
    fn pwd<'a>(&'a self, m: &'a Media) -> Option<&'a str> {
        m.ice_pwd.as_deref().or(self.ice_pwd.as_deref())
    }
    fn fp<'a>(&'a self, m: &'a Media) -> Option<&'a Fingerprint> {
        m.fingerprint.as_ref().or(self.fingerprint.as_ref())
    }
    fn setup_of(&self, m: &Media) -> Option<Setup> {
        m.setup.or(self.setup)
    }
}

fn parse_m(v: &str, n: usize) -> Result<Media, SdpError> {
    let mut it = v.split_ascii_whitespace();
    let kind = it.next().ok_or(bad(n, "m= without media"))?;
    let port = it.next().ok_or(bad(n, "m= without port"))?;
    // "port/count" is allowed (RFC 8866 §5.14); we only need the port.
    let port: u16 = parse_u(port.split('/').next().unwrap_or(port), n, "bad port")?;
    let proto = it.next().ok_or(bad(n, "m= without proto"))?.to_owned();
    let fmts: Vec<String> = it.map(str::to_owned).collect();
    Ok(Media {
        kind: MediaKind::parse(kind),
        port,
        proto,
        fmts,
        mid: None,
        ice_ufrag: None,
        ice_pwd: None,
        fingerprint: None,
        setup: None,
        rtcp_mux: false,
        rtcp_rsize: false,
        direction: Direction::SendRecv,
        codecs: Vec::new(),
        extmaps: Vec::new(),
        ssrcs: Vec::new(),
        ssrc_groups: Vec::new(),
        msid: None,
        rids: Vec::new(),
        simulcast: None,
    })
}

fn session_attr(o: &mut Offer, name: &str, val: Option<&str>, n: usize) -> Result<(), SdpError> {
    match (name, val) {
        ("ice-ufrag", Some(v)) => o.ice_ufrag = Some(ice_cred(v, n)?),
        ("ice-pwd", Some(v)) => o.ice_pwd = Some(ice_cred(v, n)?),
        ("ice-lite", _) => o.ice_lite = true,
        ("extmap-allow-mixed", None) => o.extmap_allow_mixed = true,
        ("fingerprint", Some(v)) => o.fingerprint = fingerprint(v, n)?.or(o.fingerprint.take()),
        ("setup", Some(v)) => o.setup = Some(Setup::parse(v).ok_or(bad(n, "bad a=setup"))?),
        ("group", Some(v)) => {
            let mut it = v.split_ascii_whitespace();
            if it.next() == Some("BUNDLE") && o.bundle.is_none() {
                o.bundle = Some(it.map(str::to_owned).collect());
            }
        }
        _ => {}
    }
    Ok(())
}

fn ice_cred(v: &str, n: usize) -> Result<String, SdpError> {
    if ice_char_ok(v) {
        Ok(v.to_owned())
    } else {
        Err(bad(n, "bad ICE ufrag/pwd"))
    }
}

/// Several fingerprints may be offered (RFC 8122 §5); we keep the first we can use.
fn fingerprint(v: &str, n: usize) -> Result<Option<Fingerprint>, SdpError> {
    match Fingerprint::parse(v) {
        Ok(f) => Ok(Some(f)),
        Err(super::dtls::DtlsError::BadFingerprint("unsupported hash function")) => Ok(None),
        Err(_) => Err(bad(n, "bad a=fingerprint")),
    }
}

fn codec_mut(m: &mut Media, pt: u8) -> &mut Codec {
    if let Some(i) = m.codecs.iter().position(|c| c.pt == pt) {
        return &mut m.codecs[i];
    }
    m.codecs.push(Codec {
        pt,
        name: String::new(),
        clock_rate: 0,
        channels: None,
        fmtp: None,
        rtcp_fb: Vec::new(),
    });
    let last = m.codecs.len() - 1;
    &mut m.codecs[last]
}

fn pt_of(s: &str, n: usize) -> Result<u8, SdpError> {
    let pt: u8 = parse_u(s, n, "bad payload type")?;
    if pt > 127 {
        return Err(bad(n, "payload type above 127"));
    }
    Ok(pt)
}

fn media_attr(
    m: &mut Media,
    name: &str,
    val: Option<&str>,
    n: usize,
    max_ssrcs: usize,
) -> Result<(), SdpError> {
    match (name, val) {
        ("mid", Some(v)) => {
            if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(n, "bad a=mid"));
            }
            m.mid = Some(v.to_owned())
        }
        ("ice-ufrag", Some(v)) => m.ice_ufrag = Some(ice_cred(v, n)?),
        ("ice-pwd", Some(v)) => m.ice_pwd = Some(ice_cred(v, n)?),
        ("fingerprint", Some(v)) => m.fingerprint = fingerprint(v, n)?.or(m.fingerprint.take()),
        ("setup", Some(v)) => m.setup = Some(Setup::parse(v).ok_or(bad(n, "bad a=setup"))?),
        ("rtcp-mux", _) => m.rtcp_mux = true,
        ("rtcp-rsize", _) => m.rtcp_rsize = true,
        ("sendrecv" | "sendonly" | "recvonly" | "inactive", None) => {
            m.direction = Direction::parse(name).unwrap_or(Direction::SendRecv)
        }
        ("rtpmap", Some(v)) => {
            // a=rtpmap:<pt> <name>/<clock>[/<channels>]
            let (pt, enc) = v.split_once(' ').ok_or(bad(n, "bad a=rtpmap"))?;
            let pt = pt_of(pt, n)?;
            let mut parts = enc.trim().split('/');
            let name = parts
                .next()
                .filter(|s| !s.is_empty())
                .ok_or(bad(n, "bad a=rtpmap"))?;
            let clock: u32 = parse_u(parts.next().unwrap_or(""), n, "bad clock rate")?;
            let channels = match parts.next() {
                Some(c) => Some(parse_u::<u16>(c, n, "bad channel count")?),
                None => None,
            };
            let c = codec_mut(m, pt);
            c.name = name.to_owned();
            c.clock_rate = clock;
            c.channels = channels;
        }
        ("fmtp", Some(v)) => {
            let (pt, params) = v.split_once(' ').ok_or(bad(n, "bad a=fmtp"))?;
            let pt = pt_of(pt, n)?;
            codec_mut(m, pt).fmtp = Some(params.trim().to_owned());
        }
        ("rtcp-fb", Some(v)) => {
            let (pt, fb) = v.split_once(' ').ok_or(bad(n, "bad a=rtcp-fb"))?;
            let fb = fb.trim().to_owned();
            if pt == "*" {
                for c in &mut m.codecs {
                    c.rtcp_fb.push(fb.clone());
                }
            } else {
                let pt = pt_of(pt, n)?;
                codec_mut(m, pt).rtcp_fb.push(fb);
            }
        }
        ("extmap", Some(v)) => {
            // a=extmap:<id>[/<direction>] <uri> [<attributes>]
            let mut it = v.split_ascii_whitespace();
            let idd = it.next().ok_or(bad(n, "bad a=extmap"))?;
            let uri = it.next().ok_or(bad(n, "bad a=extmap"))?;
            let (id, dir) = match idd.split_once('/') {
                Some((id, d)) => (
                    id,
                    Some(Direction::parse(d).ok_or(bad(n, "bad extmap direction"))?),
                ),
                None => (idd, None),
            };
            let id: u8 = parse_u(id, n, "bad extmap id")?;
            // RFC 8285 §5: 1–14 one-byte, 1–255 two-byte; 0 and 15 are reserved in one-byte form.
            if id == 0 {
                return Err(bad(n, "extmap id 0"));
            }
            m.extmaps.push(Extmap {
                id,
                direction: dir,
                uri: uri.to_owned(),
            });
        }
        ("ssrc", Some(v)) => {
            let (ssrc, attr) = v.split_once(' ').ok_or(bad(n, "bad a=ssrc"))?;
            let ssrc: u32 = parse_u(ssrc, n, "bad ssrc")?;
            if m.ssrcs.len() >= MAX_SSRC_LINES_PER_MEDIA {
                return Err(SdpError::TooManySsrcs("a=ssrc lines in one media section"));
            }
            if !m.ssrcs.iter().any(|(s, _)| *s == ssrc) {
                let distinct = m.distinct_ssrcs();
                if distinct >= max_ssrcs {
                    return Err(SdpError::TooManySsrcs("in one media section"));
                }
            }
            m.ssrcs.push((ssrc, attr.trim().to_owned()));
        }
        ("ssrc-group", Some(v)) => {
            let mut it = v.split_ascii_whitespace();
            let semantics = it.next().ok_or(bad(n, "bad a=ssrc-group"))?.to_owned();
            let ssrcs = it
                .map(|s| parse_u::<u32>(s, n, "bad ssrc in group"))
                .collect::<Result<Vec<_>, _>>()?;
            m.ssrc_groups.push(SsrcGroup { semantics, ssrcs });
        }
        ("msid", Some(v)) => m.msid = Some(v.to_owned()),
        ("rid", Some(v)) => m.rids.push(v.to_owned()),
        ("simulcast", Some(v)) => m.simulcast = Some(v.to_owned()),
        _ => {}
    }
    Ok(())
}

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// WHIP ingest: the client publishes, we receive (answer `recvonly`).
    Whip,
    /// WHEP egress: the client plays, we send (answer `sendonly`).
    Whep,
}

/// Our side of the answer.
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Our DTLS certificate fingerprint (sha-256).
    pub fingerprint: Fingerprint,
    /// One host candidate per address: the configured public addresses with the media port.
    pub candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP host candidates (RFC 6544), written after the UDP ones with a lower
    /// priority; empty when `relay.tcp` is off.
    pub tcp_candidates: Vec<SocketAddr>,
    pub session_id: u64,
    /// WHEP: SSRCs we will send with, consumed in order by the accepted sections.
    pub send_ssrcs: Vec<u32>,
    /// WHEP: RTX SSRCs, one per entry of `send_ssrcs` (distinct from all of them), used by the
    /// sections that accept RTX.
    pub send_rtx_ssrcs: Vec<u32>,
    /// WHEP: RTCP CNAME of our streams.
    pub cname: String,
    /// WHEP: the accepted media sections of the room's current publishers. The answer offers
    /// the viewer, per kind, only codecs, header extensions and feedback those publishers
    /// send (docs/WEBRTC.md "Negotiation per room"); empty (no publisher yet, or WHIP):
    /// everything the relay supports.
    pub publishers: Vec<NegotiatedMedia>,
}

/// What one media section became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub mid: String,
    pub kind: MediaKind,
    pub accepted: bool,
    /// Our direction.
    pub direction: Direction,
    /// Accepted codecs with the offerer's payload types, in its order of preference.
    pub codecs: Vec<Codec>,
    pub extmaps: Vec<Extmap>,
    /// SSRCs the offerer announced for this section.
    pub remote_ssrcs: Vec<u32>,
    /// WHEP: the SSRC we send with.
    pub send_ssrc: Option<u32>,
    /// Accepted RTX payload types (RFC 4588 §8.1), the offerer's numbers, each bound by `apt`
    /// to one of `codecs`.
    pub rtx: Vec<RtxCodec>,
    /// WHIP: the offerer's `a=ssrc-group:FID` pairs `(primary, rtx)` when RTX was accepted.
    pub rtx_ssrcs: Vec<(u32, u32)>,
    /// WHEP: the RTX SSRC we resend on, when RTX was accepted.
    pub send_rtx_ssrc: Option<u32>,
    /// WHIP: the simulcast streams the publisher sends, when negotiated.
    pub simulcast: Option<Simulcast>,
}

/// The RID header extension (RFC 8852 §3.1): names a packet's simulcast stream.
pub const RID_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
/// The repaired-RID header extension (RFC 8852 §3.2): names the stream an RTX packet repairs.
pub const REPAIRED_RID_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";

/// Most simulcast streams one WHIP video section may send (the relay's spatial layers).
pub const MAX_SIMULCAST_LAYERS: usize = 3;
/// Longest RID the relay takes: what one RID header extension element carries (RFC 8285
/// §4.2, one-byte form, 16 bytes).
pub const MAX_RID_LEN: usize = 16;

/// A negotiated simulcast reception (RFC 8853): the RIDs a WHIP publisher sends on one video
/// section, in the offer's order and in layer order.
///
/// Layer order (lowest resolution first, layer 0) follows the RIDs' restrictions (RFC 8851
/// §5) when every RID declares a resolution (`max-width`·`max-height`, or `max-fs`) or every
/// RID declares `max-br`: ascending by resolution, then bit rate. Otherwise it is the order of
/// `a=simulcast:send`, read as lowest first: a browser lists its encodings in the order the
/// application gave them (`sendEncodings`), and WHIP clients and the common `q;h;f` examples
/// give them lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulcast {
    /// The RIDs in the order of the offer's `a=simulcast:send` (the answer keeps it).
    pub offered: Vec<String>,
    /// The same RIDs by layer, lowest resolution first.
    pub layers: Vec<String>,
}

/// What one `a=rid` line says (RFC 8851 §10): its id, direction and the restrictions the
/// relay orders layers by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RidOrder {
    send: bool,
    /// Pixels per frame (`max-width`·`max-height`, else `max-fs`, macroblocks × 256).
    pixels: Option<u64>,
    max_br: Option<u64>,
}

fn rid_id_ok(id: &str) -> bool {
    // RFC 8851 §10: rid-id = 1*(alpha-numeric / "-" / "_"); RFC 8852 §3.1 carries it in one
    // extension element.
    !id.is_empty()
        && id.len() <= MAX_RID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parse one `a=rid` value: `<rid-id> SP <send|recv> [SP <params>]`.
fn parse_rid(v: &str) -> Option<(&str, RidOrder)> {
    let mut it = v.splitn(3, ' ');
    let id = it.next()?;
    let send = match it.next()? {
        "send" => true,
        "recv" => false,
        _ => return None,
    };
    if !rid_id_ok(id) {
        return None;
    }
    let (mut w, mut h, mut fs, mut br) = (None, None, None, None);
    for p in it.next().unwrap_or("").split(';').filter(|p| !p.is_empty()) {
        let (k, val) = p.split_once('=')?;
        let n = || val.trim().parse::<u64>().ok();
        match k.trim() {
            "max-width" => w = Some(n()?),
            "max-height" => h = Some(n()?),
            "max-fs" => fs = Some(n()?),
            "max-br" => br = Some(n()?),
            // pt= and the other restrictions (max-fps, max-pps, depend, ...) do not order.
            _ => {}
        }
    }
    let pixels = match (w, h) {
        (Some(w), Some(h)) => Some(w.saturating_mul(h)),
        _ => fs.map(|f| f.saturating_mul(256)),
    };
    Some((
        id,
        RidOrder {
            send,
            pixels,
            max_br: br,
        },
    ))
}

impl Simulcast {
    /// The simulcast a WHIP publisher's media section `m` sends, `Ok(None)` when it declares
    /// none or cannot be told apart (no RID extension offered: the relay would not know which
    /// packet is which layer). A single stream is no simulcast. An alternative list
    /// (`a,b`, RFC 8853 §5.1) takes its first RID; a paused stream (`~h`) still counts.
    pub fn negotiate(m: &Media, mid: &str) -> Result<Option<Simulcast>, SdpError> {
        let Some(line) = m.simulcast.as_deref() else {
            return Ok(None);
        };
        let err = |reason| SdpError::Simulcast {
            mid: mid.to_owned(),
            reason,
        };
        if m.kind != MediaKind::Video || !m.extmaps.iter().any(|e| e.uri == RID_EXTENSION) {
            return Ok(None);
        }
        // RFC 8853 §5.1: sc-value = ( sc-send [SP sc-recv] ) / ( sc-recv [SP sc-send] ).
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let mut send = None;
        while let Some(dir) = words.next() {
            let list = words.next().ok_or(err("bad a=simulcast"))?;
            match dir {
                "send" if send.is_none() => send = Some(list),
                "recv" => {}
                _ => return Err(err("bad a=simulcast")),
            }
        }
        let Some(list) = send else {
            return Ok(None);
        };
        let mut offered: Vec<String> = Vec::new();
        for stream in list.split(';') {
            let first = stream.split(',').next().unwrap_or("");
            let id = first.strip_prefix('~').unwrap_or(first);
            if !rid_id_ok(id) {
                return Err(err("bad RID in a=simulcast"));
            }
            if offered.iter().any(|r| r == id) {
                return Err(err("a RID twice in a=simulcast"));
            }
            if offered.len() == MAX_SIMULCAST_LAYERS {
                return Err(err("more than three simulcast streams"));
            }
            offered.push(id.to_owned());
        }
        let mut rids: Vec<(&str, RidOrder)> = Vec::new();
        for v in &m.rids {
            let r = parse_rid(v).ok_or(err("bad a=rid"))?;
            rids.push(r);
        }
        let mut orders = Vec::with_capacity(offered.len());
        for id in &offered {
            let (_, o) = rids
                .iter()
                .find(|(r, _)| r == id)
                .ok_or(err("a=simulcast names a RID without a=rid"))?;
            if !o.send {
                return Err(err("a=simulcast:send names a recv RID"));
            }
            orders.push((id.clone(), *o));
        }
        if offered.len() < 2 {
            return Ok(None);
        }
        if orders.iter().all(|(_, o)| o.pixels.is_some()) {
            orders.sort_by_key(|(_, o)| (o.pixels, o.max_br));
        } else if orders.iter().all(|(_, o)| o.max_br.is_some()) {
            orders.sort_by_key(|(_, o)| o.max_br);
        }
        Ok(Some(Simulcast {
            layers: orders.into_iter().map(|(id, _)| id).collect(),
            offered,
        }))
    }

    /// The layer (0 = lowest) a RID names, if it is one of these.
    pub fn layer_of(&self, rid: &[u8]) -> Option<u8> {
        self.layers
            .iter()
            .position(|r| r.as_bytes() == rid)
            .map(|i| i as u8)
    }
}

/// An RTX payload type: `a=rtpmap:<pt> rtx/<clock>` with `a=fmtp:<pt> apt=<apt>` (RFC 4588
/// §8.1): retransmissions of payload type `apt` travel as `pt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxCodec {
    pub pt: u8,
    pub apt: u8,
}

impl NegotiatedMedia {
    /// The RTX payload type bound to codec `apt`, if one was accepted.
    pub fn rtx_for(&self, apt: u8) -> Option<u8> {
        self.rtx.iter().find(|r| r.apt == apt).map(|r| r.pt)
    }

    /// The publisher's RTX stream of its primary SSRC `ssrc`: the FID partner and the RTX
    /// payload type bound to the first accepted codec that has one (the codec a sender uses
    /// first, RFC 8829 §5.3.1 answers in the offerer's order of preference).
    pub fn source_rtx_of(&self, ssrc: u32) -> Option<(u8, u32)> {
        let (_, rtx_ssrc) = self.rtx_ssrcs.iter().find(|(p, _)| *p == ssrc)?;
        let pt = self.codecs.iter().find_map(|c| self.rtx_for(c.pt))?;
        Some((pt, *rtx_ssrc))
    }

    /// The id this section negotiated for the Dependency Descriptor extension.
    pub fn dd_id(&self) -> Option<u8> {
        self.extmaps
            .iter()
            .find(|e| e.uri == DD_EXTENSION)
            .map(|e| e.id)
    }

    /// The id this section negotiated for the transport-wide sequence number extension.
    pub fn twcc_id(&self) -> Option<u8> {
        self.extmaps
            .iter()
            .find(|e| e.uri == TWCC_EXTENSION)
            .map(|e| e.id)
    }

    /// The abs-send-time extension id when this section answered REMB (`goog-remb` kept on a
    /// codec, which happens only without transport-cc): the relay estimates from it and
    /// sends the publisher REMB.
    pub fn remb_abs_send_time_id(&self) -> Option<u8> {
        if !self
            .codecs
            .iter()
            .any(|c| c.rtcp_fb.iter().any(|f| f == GOOG_REMB))
        {
            return None;
        }
        self.extmaps
            .iter()
            .find(|e| e.uri == ABS_SEND_TIME_EXTENSION)
            .map(|e| e.id)
    }
}

/// An answer and what it decided.
#[derive(Debug, Clone)]
pub struct Answer {
    pub sdp: String,
    pub media: Vec<NegotiatedMedia>,
    /// Our `a=setup`: passive makes us the DTLS server.
    pub setup: Setup,
    pub remote_ufrag: String,
    pub remote_pwd: String,
    pub remote_fingerprint: Fingerprint,
}

/// Header extensions the relay passes through (with their ids remapped). The transport-wide
/// sequence number is renumbered per viewer by the relay (route `twcc_id`), which reads the
/// viewer's transport-cc feedback; a publisher that sends it gets transport-cc feedback from
/// the relay (its session flags carry the id, docs/ENGINE.md "Bandwidth estimation").
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    TWCC_EXTENSION,
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:ietf:params:rtp-hdrext:toffset",
    "urn:3gpp:video-orientation",
    ABS_SEND_TIME_EXTENSION,
    "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    DD_EXTENSION,
];

/// The Dependency Descriptor extension (AV1 RTP specification, appendix A): a video section
/// of a publisher that sends it is forwarded as SVC, per viewer by decode target
/// (docs/ENGINE.md "SVC").
pub const DD_EXTENSION: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// RTCP feedback the relay honours: NACK (answered from its cache, RFC 4585 §6.2.1), PLI and
/// FIR (aggregated and translated to what the publisher takes, RFC 4585 §6.3.1, RFC 5104
/// §4.3.1), transport-cc from viewers (its downlink estimate) and to publishers (feedback the
/// relay writes about their packets; a libwebrtc sender that negotiated the transport-wide
/// extension runs its congestion control on it alone: without it Chromium held a WHIP
/// publisher at 59 kbit/s).
const SUPPORTED_FEEDBACK: &[&str] = &["nack", "nack pli", "ccm fir", TRANSPORT_CC];

/// `a=rtcp-fb:<pt> transport-cc` (draft-holmer-rmcat-transport-wide-cc-extensions-01 §4).
const TRANSPORT_CC: &str = "transport-cc";

/// `a=rtcp-fb:<pt> goog-remb` (draft-alvestrand-rmcat-remb-03 §2): answered to a publisher
/// that negotiated abs-send-time and not transport-cc; the relay then sends it REMB from a
/// receive-side estimate (its session flags carry the abs-send-time id).
const GOOG_REMB: &str = "goog-remb";

/// The absolute send time extension, which the relay's receive-side estimate reads.
pub const ABS_SEND_TIME_EXTENSION: &str =
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

/// The transport-wide sequence number extension
/// (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2).
pub const TWCC_EXTENSION: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Most RTX payload types one section keeps (one per accepted codec; the route table holds
/// one per route).
const MAX_RTX_PER_MEDIA: usize = 16;

/// The MID extension (RFC 8843 §15): the relay writes each viewer's own value.
pub const MID_EXTENSION: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Header extensions a viewer is never offered: RID and repaired RID name the publisher's
/// simulcast encodings, which mean nothing to a viewer that receives one stream.
const PUBLISHER_ONLY_EXTENSIONS: &[&str] = &[
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
];

/// A codec offered by a WHEP viewer, as answered: with no publisher of its kind in the room,
/// every supported feedback the viewer offered; else only when a publisher sends the same
/// codec, with the keyframe requests that publisher negotiated (a keyframe request the
/// publisher does not understand would go unanswered, RFC 4585 §4.2, RFC 5104 §7.1). `nack`
/// whenever offered (the relay answers it from its cache), `transport-cc` when the section
/// answers the transport-wide extension (`twcc`: the relay numbers the packets and reads the
/// feedback). `None`: not answered.
fn answer_codec(c: &Codec, room: &[&NegotiatedMedia], twcc: bool) -> Option<Codec> {
    let sent: Vec<&Codec> = room
        .iter()
        .flat_map(|p| p.codecs.iter())
        .filter(|p| same_codec(p, c))
        .collect();
    if !room.is_empty() && sent.is_empty() {
        return None;
    }
    let keep = |f: &str| match f {
        "nack" => true,
        TRANSPORT_CC => twcc,
        f => {
            SUPPORTED_FEEDBACK.contains(&f)
                && (room.is_empty() || sent.iter().any(|p| p.rtcp_fb.iter().any(|x| x == f)))
        }
    };
    Some(Codec {
        rtcp_fb: c.rtcp_fb.iter().filter(|f| keep(f)).cloned().collect(),
        ..c.clone()
    })
}

/// A codec offered by a WHIP publisher, as answered: the feedback the relay honours towards a
/// publisher (it sends NACK, PLI and FIR; transport-cc when the section answers the
/// transport-wide extension, `twcc`; else REMB when it answers abs-send-time, `remb`).
fn answer_publisher_codec(c: &Codec, twcc: bool, remb: bool) -> Codec {
    Codec {
        rtcp_fb: c
            .rtcp_fb
            .iter()
            .filter(|f| {
                (SUPPORTED_FEEDBACK.contains(&f.as_str()) && (twcc || *f != TRANSPORT_CC))
                    || (remb && *f == GOOG_REMB)
            })
            .cloned()
            .collect(),
        ..c.clone()
    }
}

/// The offered RTX payload types (RFC 4588 §8.1) bound by `apt` to an accepted codec of the
/// same clock rate, the first per codec, at most [`MAX_RTX_PER_MEDIA`].
fn rtx_codecs(m: &Media, accepted: &[Codec]) -> Vec<RtxCodec> {
    let mut out: Vec<RtxCodec> = Vec::new();
    for c in m
        .codecs
        .iter()
        .filter(|c| c.name.eq_ignore_ascii_case("rtx"))
    {
        let Some(apt) = c.params().get("apt").and_then(|a| a.parse::<u8>().ok()) else {
            continue;
        };
        let bound = accepted
            .iter()
            .any(|a| a.pt == apt && a.clock_rate == c.clock_rate);
        if bound && !out.iter().any(|r| r.apt == apt) && out.len() < MAX_RTX_PER_MEDIA {
            out.push(RtxCodec { pt: c.pt, apt });
        }
    }
    out
}

/// The offerer's `a=ssrc-group:FID primary rtx` pairs (RFC 5576 §4.2, RFC 4588 §8.3).
fn fid_pairs(m: &Media) -> Vec<(u32, u32)> {
    m.ssrc_groups
        .iter()
        .filter(|g| g.semantics == "FID")
        .filter_map(|g| match g.ssrcs[..] {
            [p, r] if p != r => Some((p, r)),
            _ => None,
        })
        .collect()
}

/// Is a header extension offered by a WHEP viewer answered? MID always (the relay writes the
/// viewer's own value); RID and repaired RID never; the others when the room has no
/// publisher of this kind yet or a publisher sends them.
fn extension_for_viewer(e: &Extmap, room: &[&NegotiatedMedia]) -> bool {
    if e.uri == MID_EXTENSION {
        return true;
    }
    if PUBLISHER_ONLY_EXTENSIONS.contains(&e.uri.as_str()) {
        return false;
    }
    room.is_empty()
        || room
            .iter()
            .any(|p| p.extmaps.iter().any(|pe| pe.uri == e.uri))
}

/// What the room's publishers send, for a refusal: "audio: opus/48000/2; video: VP8/90000".
/// `None` when nothing is published.
fn room_summary(publishers: &[NegotiatedMedia]) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for p in publishers.iter().filter(|p| p.accepted) {
        for c in &p.codecs {
            let part = match c.channels {
                Some(ch) => format!("{}: {}/{}/{}", p.kind.name(), c.name, c.clock_rate, ch),
                None => format!("{}: {}/{}", p.kind.name(), c.name, c.clock_rate),
            };
            if !parts.contains(&part) && parts.len() < 8 {
                parts.push(part);
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Is this codec one we accept? Opus, VP8, VP9, AV1, and H264 with packetization-mode 1.
pub fn codec_supported(kind: &MediaKind, c: &Codec) -> bool {
    let n = c.name.to_ascii_lowercase();
    match kind {
        MediaKind::Audio => n == "opus" && c.clock_rate == 48_000 && c.channels == Some(2),
        MediaKind::Video => {
            c.clock_rate == 90_000
                && match n.as_str() {
                    "vp8" | "vp9" | "av1" => true,
                    "h264" => c.params().get("packetization-mode").map(String::as_str) == Some("1"),
                    _ => false,
                }
        }
        _ => false,
    }
}

fn our_setup(offered: Setup, mid: &str) -> Result<Setup, SdpError> {
    // RFC 5763 §5: we are ICE-lite and wait for the peer's ClientHello (passive) unless the
    // offerer insists on being passive itself.
    match offered {
        Setup::ActPass | Setup::Active => Ok(Setup::Passive),
        Setup::Passive => Ok(Setup::Active),
        Setup::HoldConn => Err(SdpError::BadSetup(mid.to_owned())),
    }
}

/// Build the answer to `offer` for a WHIP or WHEP endpoint.
pub fn answer(offer: &Offer, endpoint: Endpoint, cfg: &AnswerConfig) -> Result<Answer, SdpError> {
    let bundle = offer.bundle.as_ref().ok_or(SdpError::NoBundle)?;
    let mut negotiated = Vec::with_capacity(offer.media.len());
    let mut transport: Option<(String, String, Fingerprint, Setup)> = None;
    let mut send_ssrcs = cfg.send_ssrcs.iter().copied();
    let mut send_rtx_ssrcs = cfg.send_rtx_ssrcs.iter().copied();
    for (i, m) in offer.media.iter().enumerate() {
        let mid = m.mid.clone().ok_or(SdpError::NoMid(i))?;
        let in_bundle = bundle.contains(&mid);
        let rtp =
            matches!(m.kind, MediaKind::Audio | MediaKind::Video) && m.proto.contains("RTP/SAVPF");
        let wanted_dir = match endpoint {
            Endpoint::Whip if m.direction.sends() => Some(Direction::RecvOnly),
            Endpoint::Whep if m.direction.receives() => Some(Direction::SendOnly),
            _ => None,
        };
        // WHEP into a room with publishers of this kind: cut to what they send.
        let room: Vec<&NegotiatedMedia> = match endpoint {
            Endpoint::Whep => cfg
                .publishers
                .iter()
                .filter(|p| p.accepted && p.kind == m.kind)
                .collect(),
            Endpoint::Whip => Vec::new(),
        };
        let extmaps: Vec<Extmap> = m
            .extmaps
            .iter()
            .filter(|e| SUPPORTED_EXTENSIONS.contains(&e.uri.as_str()))
            .filter(|e| match endpoint {
                Endpoint::Whip => true,
                Endpoint::Whep => extension_for_viewer(e, &room),
            })
            .cloned()
            .collect();
        let twcc = extmaps.iter().any(|e| e.uri == TWCC_EXTENSION);
        // A publisher without transport-cc gets REMB from the relay's receive-side estimate,
        // which works from abs-send-time (transport-cc preferred when both are offered).
        let remb = !twcc && extmaps.iter().any(|e| e.uri == ABS_SEND_TIME_EXTENSION);
        let codecs: Vec<Codec> = if rtp {
            m.codecs
                .iter()
                .filter(|c| codec_supported(&m.kind, c))
                .filter_map(|c| match endpoint {
                    Endpoint::Whip => Some(answer_publisher_codec(c, twcc, remb)),
                    Endpoint::Whep => answer_codec(c, &room, twcc),
                })
                .collect()
        } else {
            Vec::new()
        };
        let accepted =
            in_bundle && rtp && m.port != 0 && wanted_dir.is_some() && !codecs.is_empty();
        if accepted {
            if !m.rtcp_mux {
                return Err(SdpError::NoRtcpMux(mid));
            }
            let ufrag = offer
                .ufrag(m)
                .ok_or_else(|| SdpError::NoIceCredentials(mid.clone()))?;
            let pwd = offer
                .pwd(m)
                .ok_or_else(|| SdpError::NoIceCredentials(mid.clone()))?;
            let fp = offer
                .fp(m)
                .ok_or_else(|| SdpError::NoFingerprint(mid.clone()))?;
            let setup = our_setup(offer.setup_of(m).unwrap_or(Setup::ActPass), &mid)?;
            let t = (ufrag.to_owned(), pwd.to_owned(), fp.clone(), setup);
            match &transport {
                None => transport = Some(t),
                // RFC 8843 §7.1.3: one transport for the bundle.
                Some(prev) if *prev != t => return Err(SdpError::BundleMismatch),
                Some(_) => {}
            }
        }
        let extmaps = if accepted { extmaps } else { Vec::new() };
        // A publisher's RTX is taken only with the FID groups that name its RTX SSRCs: the
        // relay tells retransmissions apart by SSRC (route `source_rtx`), and without them
        // they would be forwarded as if they were the stream. Declined, it resends originals.
        // A simulcast section names its RTX streams by repaired RID (RFC 8852 §3.2) instead:
        // control learns their SSRCs from their packets like the layers' (core/simulcast.rs).
        let simulcast = if accepted && endpoint == Endpoint::Whip {
            Simulcast::negotiate(m, &mid)?
        } else {
            None
        };
        let repaired_rid = m.extmaps.iter().any(|e| e.uri == REPAIRED_RID_EXTENSION);
        let rtx = if accepted
            && (endpoint == Endpoint::Whep
                || !fid_pairs(m).is_empty()
                || (simulcast.is_some() && repaired_rid))
        {
            rtx_codecs(m, &codecs)
        } else {
            Vec::new()
        };
        let (send_ssrc, send_rtx_ssrc) = if accepted && endpoint == Endpoint::Whep {
            let ssrc = send_ssrcs.next();
            let rtx_ssrc = send_rtx_ssrcs.next();
            (ssrc, rtx_ssrc.filter(|_| ssrc.is_some() && !rtx.is_empty()))
        } else {
            (None, None)
        };
        let rtx_ssrcs = if endpoint == Endpoint::Whip && !rtx.is_empty() {
            fid_pairs(m)
        } else {
            Vec::new()
        };
        negotiated.push(NegotiatedMedia {
            mid,
            kind: m.kind.clone(),
            accepted,
            direction: wanted_dir
                .filter(|_| accepted)
                .unwrap_or(Direction::Inactive),
            codecs: if accepted { codecs } else { Vec::new() },
            extmaps,
            remote_ssrcs: m.ssrc_list(),
            send_ssrc,
            rtx,
            rtx_ssrcs,
            send_rtx_ssrc,
            simulcast,
        });
    }
    if endpoint == Endpoint::Whep && !negotiated.iter().any(|n| n.accepted) {
        if let Some(what) = room_summary(&cfg.publishers) {
            return Err(SdpError::NoCodecWithRoom(what));
        }
    }
    let (remote_ufrag, remote_pwd, remote_fingerprint, setup) =
        transport.ok_or(SdpError::NothingAccepted)?;
    let sdp = write_answer(offer, &negotiated, setup, cfg);
    Ok(Answer {
        sdp,
        media: negotiated,
        setup,
        remote_ufrag,
        remote_pwd,
        remote_fingerprint,
    })
}

fn write_answer(
    offer: &Offer,
    media: &[NegotiatedMedia],
    setup: Setup,
    cfg: &AnswerConfig,
) -> String {
    // `write!` into a String cannot fail; results are ignored with `let _`.
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
        cfg.session_id
    );
    let mids: Vec<&str> = media
        .iter()
        .filter(|m| m.accepted)
        .map(|m| m.mid.as_str())
        .collect();
    let _ = write!(s, "a=group:BUNDLE {}\r\n", mids.join(" "));
    s.push_str("a=ice-lite\r\na=msid-semantic: WMS\r\n");
    // RFC 8285 §6: both forms of header extensions, when the offerer allows them; the relay
    // parses and rewrites both and passes each packet's form on.
    if offer.extmap_allow_mixed {
        s.push_str("a=extmap-allow-mixed\r\n");
    }
    let port = cfg.candidates.first().map(|a| a.port()).unwrap_or(9);
    for (om, nm) in offer.media.iter().zip(media) {
        if !nm.accepted {
            // RFC 8866 §5.14 / RFC 3264 §6: a rejected stream keeps its m-line with port 0.
            let fmt = om.fmts.first().map(String::as_str).unwrap_or("0");
            let _ = write!(
                s,
                "m={} 0 {} {}\r\nc=IN IP4 0.0.0.0\r\n",
                om.kind.name(),
                om.proto,
                fmt
            );
            let _ = write!(s, "a=mid:{}\r\na=inactive\r\n", nm.mid);
            continue;
        }
        let pts: Vec<String> = nm
            .codecs
            .iter()
            .flat_map(|c| std::iter::once(c.pt).chain(nm.rtx_for(c.pt)))
            .map(|pt| pt.to_string())
            .collect();
        let _ = write!(
            s,
            "m={} {} {} {}\r\nc=IN IP4 0.0.0.0\r\n",
            nm.kind.name(),
            port,
            om.proto,
            pts.join(" ")
        );
        let _ = write!(
            s,
            "a=mid:{}\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:{}\r\na=setup:{}\r\n",
            nm.mid,
            cfg.ice_ufrag,
            cfg.ice_pwd,
            cfg.fingerprint,
            setup.name()
        );
        s.push_str("a=rtcp-mux\r\n");
        if om.rtcp_rsize {
            s.push_str("a=rtcp-rsize\r\n");
        }
        let _ = write!(s, "a={}\r\n", nm.direction.name());
        for e in &nm.extmaps {
            let _ = write!(s, "a=extmap:{} {}\r\n", e.id, e.uri);
        }
        for c in &nm.codecs {
            match c.channels {
                Some(ch) => {
                    let _ = write!(
                        s,
                        "a=rtpmap:{} {}/{}/{}\r\n",
                        c.pt, c.name, c.clock_rate, ch
                    );
                }
                None => {
                    let _ = write!(s, "a=rtpmap:{} {}/{}\r\n", c.pt, c.name, c.clock_rate);
                }
            }
            if let Some(f) = &c.fmtp {
                let _ = write!(s, "a=fmtp:{} {}\r\n", c.pt, f);
            }
            for fb in &c.rtcp_fb {
                let _ = write!(s, "a=rtcp-fb:{} {}\r\n", c.pt, fb);
            }
            if let Some(rtx) = nm.rtx_for(c.pt) {
                let _ = write!(
                    s,
                    "a=rtpmap:{rtx} rtx/{}\r\na=fmtp:{rtx} apt={}\r\n",
                    c.clock_rate, c.pt
                );
            }
        }
        if let Some(sc) = &nm.simulcast {
            // RFC 8851 §4, RFC 8853 §5.3: each RID the offer sends, received; the streams in
            // the offer's order.
            for r in &sc.offered {
                let _ = write!(s, "a=rid:{r} recv\r\n");
            }
            let _ = write!(s, "a=simulcast:recv {}\r\n", sc.offered.join(";"));
        }
        if let Some(ssrc) = nm.send_ssrc {
            let _ = write!(s, "a=msid:sluice {}\r\n", nm.mid);
            // RFC 4588 §8.3 / RFC 5576 §4.2: the RTX stream is the FID partner of ours.
            let ours: &[u32] = match nm.send_rtx_ssrc {
                Some(rtx) => {
                    let _ = write!(s, "a=ssrc-group:FID {ssrc} {rtx}\r\n");
                    &[ssrc, rtx]
                }
                None => &[ssrc],
            };
            for x in ours {
                let _ = write!(
                    s,
                    "a=ssrc:{x} cname:{}\r\na=ssrc:{x} msid:sluice {}\r\n",
                    cfg.cname, nm.mid
                );
            }
        }
        // RFC 8839 §5.1: one host candidate per public address, UDP, component 1.
        for (i, a) in cfg.candidates.iter().enumerate() {
            let prio = candidate_priority(i, a);
            let _ = write!(
                s,
                "a=candidate:{} 1 udp {} {} {} typ host\r\n",
                i + 1,
                prio,
                a.ip(),
                a.port()
            );
        }
        // RFC 6544 §4.5: passive TCP host candidates, after (and below) the UDP ones.
        let n = cfg.candidates.len();
        for (i, a) in cfg.tcp_candidates.iter().enumerate() {
            let _ = write!(
                s,
                "a=candidate:{} 1 tcp {} {} {} typ host tcptype passive\r\n",
                n + i + 1,
                tcp_candidate_priority(i),
                a.ip(),
                a.port()
            );
        }
        s.push_str("a=end-of-candidates\r\n");
    }
    s
}

/// RFC 6544 §4.2: host type preference 126; local preference (2^13)·direction_pref +
/// other_pref with direction_pref 4 for passive host candidates and other_pref descending in
/// configuration order. Always below every UDP candidate's ([`candidate_priority`]), so a
/// peer that reaches both picks UDP.
fn tcp_candidate_priority(index: usize) -> u32 {
    let local = (4u32 << 13) | 8_191u32.saturating_sub(index as u32);
    (126 << 24) | (local << 8) | (256 - 1)
}

/// RFC 8445 §5.1.2.1: (2^24)·type_pref + (2^8)·local_pref + (256 − component); host type
/// preference 126, local preference descending in configuration order.
fn candidate_priority(index: usize, _addr: &SocketAddr) -> u32 {
    let local = 65_535u32.saturating_sub(index as u32);
    (126 << 24) | (local << 8) | (256 - 1)
}

fn same_codec(a: &Codec, b: &Codec) -> bool {
    if !a.name.eq_ignore_ascii_case(&b.name)
        || a.clock_rate != b.clock_rate
        || a.channels.unwrap_or(1) != b.channels.unwrap_or(1)
    {
        return false;
    }
    let (pa, pb) = (a.params(), b.params());
    let get = |p: &BTreeMap<String, String>, k: &str, d: &str| {
        p.get(k).cloned().unwrap_or_else(|| d.to_owned())
    };
    match a.name.to_ascii_lowercase().as_str() {
        // RFC 6184 §8.1: packetization-mode must match; profile_idc (first byte of
        // profile-level-id) must match; the level may differ.
        "h264" => {
            get(&pa, "packetization-mode", "0") == get(&pb, "packetization-mode", "0")
                && get(&pa, "profile-level-id", "42001f")
                    .get(..2)
                    .map(str::to_ascii_lowercase)
                    == get(&pb, "profile-level-id", "42001f")
                        .get(..2)
                        .map(str::to_ascii_lowercase)
        }
        "vp9" => get(&pa, "profile-id", "0") == get(&pb, "profile-id", "0"),
        "av1" => get(&pa, "profile", "0") == get(&pb, "profile", "0"),
        _ => true,
    }
}

/// Publisher payload type → viewer payload type, for every publisher codec the viewer also
/// negotiated (by codec name, clock rate, channels and the fmtp parameters that change the
/// bitstream). Pairs where both numbers are equal are included, so a missing PT means "drop".
pub fn pt_map(publisher: &[Codec], viewer: &[Codec]) -> Vec<(u8, u8)> {
    publisher
        .iter()
        .filter_map(|p| {
            viewer
                .iter()
                .find(|v| same_codec(p, v))
                .map(|v| (p.pt, v.pt))
        })
        .collect()
}

/// Publisher extension id → viewer extension id, by URI (RFC 8285).
pub fn ext_map(publisher: &[Extmap], viewer: &[Extmap]) -> Vec<(u8, u8)> {
    publisher
        .iter()
        .filter_map(|p| viewer.iter().find(|v| v.uri == p.uri).map(|v| (p.id, v.id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::dtls::HashFunc;

    const FP: &str = "sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E";

    /// A Chrome-style WHIP offer: audio + video, rtx/red/ulpfec, transport-cc, simulcast lines.
    fn chrome_offer(setup: &str) -> String {
        format!(
            "v=0\r\n\
o=- 4215775240449105457 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:EsAw\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:{FP}\r\n\
a=setup:{setup}\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\n\
a=msid:stream track-a\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:3735928559 cname:abc\r\n\
a=ssrc:3735928559 msid:stream track-a\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 45 46 102 103 127\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:EsAw\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n\
a=fingerprint:{FP}\r\n\
a=setup:{setup}\r\n\
a=mid:1\r\n\
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:13 urn:3gpp:video-orientation\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11/sendonly urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=sendonly\r\n\
a=msid:stream track-v\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=fmtp:98 profile-id=0\r\n\
a=rtpmap:99 VP9/90000\r\n\
a=fmtp:99 profile-id=2\r\n\
a=rtpmap:100 H264/90000\r\n\
a=fmtp:100 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:101 H264/90000\r\n\
a=fmtp:101 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:45 AV1/90000\r\n\
a=fmtp:45 level-idx=5;profile=0;tier=0\r\n\
a=rtpmap:46 rtx/90000\r\n\
a=fmtp:46 apt=45\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640032\r\n\
a=rtpmap:103 red/90000\r\n\
a=rtpmap:127 ulpfec/90000\r\n\
a=rid:h send\r\n\
a=rid:l send\r\n\
a=simulcast:send h;l\r\n\
a=ssrc-group:FID 1111 2222\r\n\
a=ssrc:1111 cname:abc\r\n\
a=ssrc:2222 cname:abc\r\n"
        )
    }

    fn cfg() -> AnswerConfig {
        AnswerConfig {
            publishers: Vec::new(),
            ice_ufrag: "sluiceUF".into(),
            ice_pwd: "sluicepasswordsluicepass".into(),
            fingerprint: Fingerprint::parse(FP).unwrap(),
            candidates: vec![
                "203.0.113.7:3478".parse().unwrap(),
                "[2001:db8::7]:3478".parse().unwrap(),
            ],
            tcp_candidates: vec!["203.0.113.7:443".parse().unwrap()],
            session_id: 42,
            send_ssrcs: vec![0x1000, 0x2000],
            send_rtx_ssrcs: vec![0x1001, 0x2001],
            cname: "sluice".into(),
        }
    }

    #[test]
    fn parses_chrome_offer() {
        let o = Offer::parse(&chrome_offer("actpass")).unwrap();
        assert_eq!(
            o.bundle.as_deref(),
            Some(&["0".to_owned(), "1".to_owned()][..])
        );
        assert_eq!(o.media.len(), 2);
        let a = &o.media[0];
        assert_eq!(a.kind, MediaKind::Audio);
        assert_eq!(a.mid.as_deref(), Some("0"));
        assert_eq!(a.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(a.fingerprint.as_ref().unwrap().hash, HashFunc::Sha256);
        assert_eq!(a.setup, Some(Setup::ActPass));
        assert!(a.rtcp_mux && a.rtcp_rsize);
        assert_eq!(a.direction, Direction::SendOnly);
        assert_eq!(a.codecs[0].name, "opus");
        assert_eq!(a.codecs[0].channels, Some(2));
        assert_eq!(a.codecs[0].params()["useinbandfec"], "1");
        assert_eq!(a.ssrc_list(), vec![3_735_928_559]);
        let v = &o.media[1];
        assert_eq!(v.codecs.len(), 11);
        assert_eq!(v.extmaps.len(), 7);
        assert_eq!(v.extmaps[6].direction, Some(Direction::SendOnly));
        assert_eq!(v.ssrc_groups[0].ssrcs, vec![1111, 2222]);
        assert_eq!(v.rids.len(), 2);
        assert_eq!(v.simulcast.as_deref(), Some("send h;l"));
        assert_eq!(v.codecs[0].rtcp_fb.len(), 5);
    }

    /// A publisher that offers goog-remb and abs-send-time but not transport-cc (aiortc's
    /// shape) is answered REMB, and the abs-send-time id goes to the relay; one that offers
    /// neither extension is answered no REMB.
    #[test]
    fn whip_answer_takes_remb_without_transport_cc() {
        let offer = chrome_offer("actpass")
            .replace(
                "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
                "",
            )
            .replace("a=rtcp-fb:111 transport-cc\r\n", "")
            .replace("a=rtcp-fb:96 transport-cc\r\n", "");
        let a = answer(&Offer::parse(&offer).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        let video = &a.media[1];
        assert_eq!(video.twcc_id(), None);
        assert_eq!(
            video.codecs[0].rtcp_fb,
            ["goog-remb", "ccm fir", "nack", "nack pli"]
        );
        assert_eq!(video.remb_abs_send_time_id(), Some(2));
        assert!(a.sdp.contains("a=rtcp-fb:96 goog-remb\r\n"));
        assert!(a
            .sdp
            .contains(&format!("a=extmap:2 {ABS_SEND_TIME_EXTENSION}\r\n")));
        // Audio offered no goog-remb: none answered, though the section has the extension.
        assert_eq!(a.media[0].remb_abs_send_time_id(), None);
        // Without abs-send-time the relay cannot estimate: no goog-remb.
        let offer = offer.replace(&format!("a=extmap:2 {ABS_SEND_TIME_EXTENSION}\r\n"), "");
        let a = answer(&Offer::parse(&offer).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert_eq!(
            a.media[1].codecs[0].rtcp_fb,
            ["ccm fir", "nack", "nack pli"]
        );
        assert_eq!(a.media[1].remb_abs_send_time_id(), None);
    }

    #[test]
    fn whip_answer() {
        let o = Offer::parse(&chrome_offer("actpass")).unwrap();
        let a = answer(&o, Endpoint::Whip, &cfg()).unwrap();
        assert_eq!(a.setup, Setup::Passive);
        assert_eq!(a.remote_ufrag, "EsAw");
        assert_eq!(a.remote_fingerprint, Fingerprint::parse(FP).unwrap());
        let audio = &a.media[0];
        assert!(audio.accepted);
        assert_eq!(audio.direction, Direction::RecvOnly);
        assert_eq!(
            audio.codecs.iter().map(|c| c.pt).collect::<Vec<_>>(),
            vec![111]
        );
        assert_eq!(
            audio.codecs[0].rtcp_fb,
            ["transport-cc"],
            "the relay sends publishers transport-cc feedback"
        );
        let video = &a.media[1];
        // Offerer's PTs and order kept; red/ulpfec and H264 mode 0 left out, RTX kept beside
        // its codec.
        assert_eq!(
            video.codecs.iter().map(|c| c.pt).collect::<Vec<_>>(),
            vec![96, 98, 99, 100, 45, 102]
        );
        assert_eq!(
            video.rtx,
            [RtxCodec { pt: 97, apt: 96 }, RtxCodec { pt: 46, apt: 45 }]
        );
        // transport-cc and the transport-wide extension: the relay sends the publisher
        // feedback about its packets (its session flags carry the id).
        assert_eq!(
            video.codecs[0].rtcp_fb,
            vec!["transport-cc", "ccm fir", "nack", "nack pli"]
        );
        assert_eq!(video.twcc_id(), Some(3));
        assert_eq!(
            video.remb_abs_send_time_id(),
            None,
            "transport-cc preferred: goog-remb not answered beside it"
        );
        assert_eq!(video.extmaps.len(), 7);
        assert_eq!(video.remote_ssrcs, vec![1111, 2222]);
        assert_eq!(video.send_ssrc, None);

        let sdp = &a.sdp;
        for needle in [
            "a=group:BUNDLE 0 1\r\n",
            "a=ice-lite\r\n",
            "a=ice-ufrag:sluiceUF\r\n",
            "a=ice-pwd:sluicepasswordsluicepass\r\n",
            &format!("a=fingerprint:{FP}\r\n"),
            "a=setup:passive\r\n",
            "a=rtcp-mux\r\n",
            "a=recvonly\r\n",
            "m=audio 3478 UDP/TLS/RTP/SAVPF 111\r\n",
            "m=video 3478 UDP/TLS/RTP/SAVPF 96 97 98 99 100 45 46 102\r\n",
            "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n",
            "a=rtpmap:46 rtx/90000\r\na=fmtp:46 apt=45\r\n",
            "a=fmtp:100 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n",
            "typ host\r\n",
            " 203.0.113.7 3478 typ host",
            " 2001:db8::7 3478 typ host",
            "a=candidate:3 1 tcp 2124414975 203.0.113.7 443 typ host tcptype passive\r\n\
             a=end-of-candidates\r\n",
        ] {
            assert!(sdp.contains(needle), "missing {needle:?} in\n{sdp}");
        }
        for needle in [
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
            "a=rtcp-fb:96 transport-cc\r\n",
            "a=rtcp-fb:111 transport-cc\r\n",
        ] {
            assert!(
                sdp.contains(needle),
                "the transport-wide extension and transport-cc to a publisher: {needle:?} in\n{sdp}"
            );
        }
        assert!(
            tcp_candidate_priority(0) < candidate_priority(1, &"[::1]:1".parse().unwrap()),
            "TCP ranks below UDP"
        );
        assert!(!sdp.contains("sendonly"));
        assert!(!sdp.contains("ssrc:"));
        // Our own parser reads our answer back.
        let back = Offer::parse(sdp).unwrap();
        assert_eq!(back.media.len(), 2);
        assert!(back
            .media
            .iter()
            .all(|m| m.rtcp_mux && m.setup == Some(Setup::Passive)));
        assert!(back.ice_lite);
    }

    #[test]
    fn setup_roles() {
        let o = Offer::parse(&chrome_offer("passive")).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap().setup,
            Setup::Active
        );
        let o = Offer::parse(&chrome_offer("active")).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap().setup,
            Setup::Passive
        );
        let o = Offer::parse(&chrome_offer("holdconn")).unwrap();
        assert!(matches!(
            answer(&o, Endpoint::Whip, &cfg()),
            Err(SdpError::BadSetup(_))
        ));
    }

    #[test]
    fn whep_answer_sendonly_with_ssrcs() {
        let offer = chrome_offer("actpass").replace("a=sendonly", "a=recvonly");
        let o = Offer::parse(&offer).unwrap();
        let a = answer(&o, Endpoint::Whep, &cfg()).unwrap();
        assert!(a
            .media
            .iter()
            .all(|m| m.accepted && m.direction == Direction::SendOnly));
        assert_eq!(a.media[0].send_ssrc, Some(0x1000));
        assert_eq!(a.media[1].send_ssrc, Some(0x2000));
        assert!(a.sdp.contains("a=sendonly\r\n"));
        assert!(a
            .sdp
            .contains(&format!("a=ssrc:{} cname:sluice\r\n", 0x1000)));
        // A publisher's offer (sendonly) at WHEP has nothing we could send to.
        let o = Offer::parse(&chrome_offer("actpass")).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whep, &cfg()).unwrap_err(),
            SdpError::NothingAccepted
        );
    }

    /// A room publisher's accepted sections: the answer to a Chrome WHIP offer whose video
    /// is cut to `video_codecs` (rtpmap lines) with `video_fb` feedback on each.
    fn room_of(video: &str) -> Vec<NegotiatedMedia> {
        let o = Offer::parse(video).unwrap();
        answer(&o, Endpoint::Whip, &cfg()).unwrap().media
    }

    /// [`room_of`] with the transport-wide extension at id 3 in every section, as a publisher
    /// whose packets carry it (not a WebRTC one: `for_publisher`).
    fn room_with_twcc(video: &str) -> Vec<NegotiatedMedia> {
        let mut room = room_of(video);
        for m in &mut room {
            m.extmaps.push(Extmap {
                id: 3,
                direction: None,
                uri: TWCC_EXTENSION.into(),
            });
        }
        room
    }

    /// A Chrome-like publisher that sends VP8 only, asks for keyframes with PLI only (no
    /// FIR), and negotiated no abs-send-time.
    fn vp8_pli_only_publisher() -> String {
        chrome_offer("actpass")
            .replace("a=rtcp-fb:96 ccm fir\r\n", "")
            .replace(
                "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n",
                "",
            )
            .replace("a=rtpmap:98 VP9/90000\r\n", "a=rtpmap:98 ISAC/16000\r\n")
            .replace("a=rtpmap:99 VP9/90000\r\n", "a=rtpmap:99 ISAC/16000\r\n")
            .replace("a=rtpmap:100 H264/90000\r\n", "a=rtpmap:100 ISAC/16000\r\n")
            .replace("a=rtpmap:102 H264/90000\r\n", "a=rtpmap:102 ISAC/16000\r\n")
            .replace("a=rtpmap:45 AV1/90000\r\n", "a=rtpmap:45 ISAC/16000\r\n")
    }

    /// Negotiation per room: a viewer is answered only what the room's publishers send
    /// (codecs, extensions, keyframe feedback), MID always, RID never.
    #[test]
    fn whep_answer_follows_the_room() {
        let room = room_of(&vp8_pli_only_publisher());
        let pv = room.iter().find(|m| m.kind == MediaKind::Video).unwrap();
        assert_eq!(pv.codecs.len(), 1, "publisher sends VP8 only");
        let viewer = chrome_offer("actpass").replace("a=sendonly", "a=recvonly");
        let o = Offer::parse(&viewer).unwrap();
        let c = AnswerConfig {
            publishers: room,
            ..cfg()
        };
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        let v = &a.media[1];
        assert!(v.accepted);
        let names: Vec<&str> = v.codecs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["VP8"], "only the codec the room carries");
        assert_eq!(
            v.codecs[0].rtcp_fb,
            ["transport-cc", "nack", "nack pli"],
            "no FIR for a PLI-only publisher; transport-cc: the publisher sends the extension"
        );
        assert!(!a.sdp.contains("ccm fir"));
        let uris: Vec<&str> = v.extmaps.iter().map(|e| e.uri.as_str()).collect();
        assert!(
            uris.contains(&MID_EXTENSION),
            "MID kept: the relay writes the viewer's"
        );
        assert!(
            !uris.iter().any(|u| u.contains("stream-id")),
            "no RID to a viewer"
        );
        assert!(
            !uris.iter().any(|u| u.contains("abs-send-time")),
            "not sent by the room"
        );
        assert!(uris.contains(&"urn:3gpp:video-orientation"));
        // Audio: the room's Opus.
        assert_eq!(a.media[0].codecs.len(), 1);
        assert_eq!(a.media[0].codecs[0].name, "opus");
    }

    /// SVC: a WHIP publisher offering VP9, AV1 and the Dependency Descriptor keeps all three
    /// (its DD id is what the relay reads frames by); a WHEP viewer gets the extension only
    /// when it offers it too and the room's publisher sends it.
    #[test]
    fn dependency_descriptor_for_svc_publishers_and_viewers() {
        let dd_line = format!("a=extmap:12 {DD_EXTENSION}\r\n");
        let with_dd = |sdp: String| {
            sdp.replace(
                "a=extmap:13 urn:3gpp:video-orientation\r\n",
                &format!("a=extmap:13 urn:3gpp:video-orientation\r\n{dd_line}"),
            )
        };
        let publisher = with_dd(chrome_offer("actpass"));
        let room = room_of(&publisher);
        let pv = room.iter().find(|m| m.kind == MediaKind::Video).unwrap();
        assert_eq!(pv.dd_id(), Some(12));
        let names: Vec<&str> = pv.codecs.iter().map(|c| c.name.as_str()).collect();
        assert!(
            names.contains(&"VP9") && names.contains(&"AV1"),
            "{names:?}"
        );
        let vp9 = pv.codecs.iter().find(|c| c.name == "VP9").unwrap();
        assert_eq!(
            vp9.params().get("profile-id").map(String::as_str),
            Some("0")
        );

        // A viewer offering the extension (under another id) is answered it.
        let viewer = with_dd(chrome_offer("actpass").replace("a=sendonly", "a=recvonly"))
            .replace("a=extmap:12 ", "a=extmap:9 ");
        let c = AnswerConfig {
            publishers: room.clone(),
            ..cfg()
        };
        let a = answer(&Offer::parse(&viewer).unwrap(), Endpoint::Whep, &c).unwrap();
        assert_eq!(a.media[1].dd_id(), Some(9));
        assert!(a.sdp.contains(&format!("a=extmap:9 {DD_EXTENSION}\r\n")));
        assert_eq!(
            ext_map(&pv.extmaps, &a.media[1].extmaps)
                .iter()
                .find(|m| m.0 == 12),
            Some(&(12, 9))
        );
        // Chromium writes a key frame's descriptor (longer than 16 bytes) only in the two-byte
        // form: the answer allows mixed forms when the offer does (RFC 8285 §6).
        assert!(a.sdp.contains("a=extmap-allow-mixed\r\n"));
        let one_byte = viewer.replace("a=extmap-allow-mixed\r\n", "");
        let o = Offer::parse(&one_byte).unwrap();
        assert!(!o.extmap_allow_mixed);
        let a1 = answer(&o, Endpoint::Whep, &c).unwrap();
        assert!(!a1.sdp.contains("extmap-allow-mixed"));
        // One that does not offer it is not.
        let plain = chrome_offer("actpass").replace("a=sendonly", "a=recvonly");
        let a = answer(&Offer::parse(&plain).unwrap(), Endpoint::Whep, &c).unwrap();
        assert_eq!(a.media[1].dd_id(), None);
        // Nor is a viewer of a room whose publisher does not send it.
        let c = AnswerConfig {
            publishers: room_of(&chrome_offer("actpass")),
            ..cfg()
        };
        let a = answer(&Offer::parse(&viewer).unwrap(), Endpoint::Whep, &c).unwrap();
        assert_eq!(a.media[1].dd_id(), None);
    }

    /// Without a publisher of a kind the viewer gets everything the relay supports for it;
    /// with publishers and no codec in common it is refused with what the room carries.
    #[test]
    fn whep_answer_without_publishers_or_common_codec() {
        let viewer = chrome_offer("actpass").replace("a=sendonly", "a=recvonly");
        let o = Offer::parse(&viewer).unwrap();
        let a = answer(&o, Endpoint::Whep, &cfg()).unwrap();
        assert!(a.media[1].codecs.len() > 1);
        assert!(a.sdp.contains("ccm fir"));
        // A video-only room: the viewer's audio section keeps every supported codec.
        let video_room: Vec<NegotiatedMedia> = room_of(&vp8_pli_only_publisher())
            .into_iter()
            .filter(|m| m.kind == MediaKind::Video)
            .collect();
        let c = AnswerConfig {
            publishers: video_room.clone(),
            ..cfg()
        };
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        assert!(a.media[0].accepted && a.media[1].accepted);
        // A viewer that offers only H264 video to a VP8 room: refused, naming the room.
        let h264_only = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\n\
a=fingerprint:"
            .to_owned()
            + FP
            + "\r\na=setup:actpass\r\na=rtcp-mux\r\na=recvonly\r\na=rtpmap:100 H264/90000\r\n\
a=fmtp:100 packetization-mode=1;profile-level-id=42e01f\r\n";
        let o = Offer::parse(&h264_only).unwrap();
        let c = AnswerConfig {
            publishers: video_room,
            ..cfg()
        };
        match answer(&o, Endpoint::Whep, &c) {
            Err(SdpError::NoCodecWithRoom(what)) => assert!(what.contains("VP8/90000"), "{what}"),
            other => panic!("expected NoCodecWithRoom, got {other:?}"),
        }
    }

    #[test]
    fn rejects_sections_without_common_codec() {
        let offer =
            chrome_offer("actpass").replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 ISAC/16000");
        let o = Offer::parse(&offer).unwrap();
        let a = answer(&o, Endpoint::Whip, &cfg()).unwrap();
        assert!(!a.media[0].accepted);
        assert!(a.media[1].accepted);
        assert!(a.sdp.contains("m=audio 0 UDP/TLS/RTP/SAVPF 111\r\n"));
        assert!(a.sdp.contains("a=group:BUNDLE 1\r\n"));
        // m-lines stay in offer order (RFC 3264 §6).
        assert!(a.sdp.find("m=audio").unwrap() < a.sdp.find("m=video").unwrap());

        let none = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=rtcp-mux\r\na=sendonly\r\na=rtpmap:0 PCMU/8000\r\n";
        let o = Offer::parse(none).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap_err(),
            SdpError::NothingAccepted
        );
        // Data channels are declined, not an error.
        let dc = chrome_offer("actpass").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\na=sctp-port:5000\r\n";
        let a = answer(&Offer::parse(&dc).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(!a.media[2].accepted);
        assert!(a
            .sdp
            .contains("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"));
    }

    #[test]
    fn bundle_and_rtcp_mux_required() {
        let o =
            Offer::parse(&chrome_offer("actpass").replace("a=group:BUNDLE 0 1\r\n", "")).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap_err(),
            SdpError::NoBundle
        );
        let o = Offer::parse(&chrome_offer("actpass").replace("a=rtcp-mux\r\n", "")).unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap_err(),
            SdpError::NoRtcpMux("0".into())
        );
        let o = Offer::parse(&chrome_offer("actpass").replacen(
            "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
            "a=ice-pwd:otherpasswordotherpassword",
            1,
        ))
        .unwrap();
        assert_eq!(
            answer(&o, Endpoint::Whip, &cfg()).unwrap_err(),
            SdpError::BundleMismatch
        );
        let o = Offer::parse(&chrome_offer("actpass").replace("a=fingerprint", "a=x-fingerprint"))
            .unwrap();
        assert!(matches!(
            answer(&o, Endpoint::Whip, &cfg()),
            Err(SdpError::NoFingerprint(_))
        ));
    }

    /// The SSRCs a real client announces parse; the thousands an attacker might (each a route
    /// per viewer) are refused at once.
    #[test]
    fn ssrcs_are_capped_per_media_section_and_per_offer() {
        let media = |ssrcs: std::ops::Range<u32>, lines_each: usize| {
            let mut m = String::from("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n");
            for s in ssrcs {
                for k in 0..lines_each {
                    m.push_str(&format!("a=ssrc:{s} attr{k}:x\r\n"));
                }
            }
            m
        };
        let offer = |body: String| Offer::parse(&format!("v=0\r\n{body}"));
        // Eight SSRCs with several attributes each, in two sections: fine.
        assert!(offer(media(1..9, 3) + &media(11..19, 3)).is_ok());
        assert_eq!(
            offer(media(1..10, 1)),
            Err(SdpError::TooManySsrcs("in one media section"))
        );
        assert_eq!(
            offer(media(1..9, 1) + &media(11..19, 1) + &media(21..22, 1)),
            Err(SdpError::TooManySsrcs("in the offer"))
        );
        assert_eq!(
            offer(media(1..2, 65)),
            Err(SdpError::TooManySsrcs("a=ssrc lines in one media section"))
        );
        // The attack that stalled control: 2,900 SSRCs in one offer.
        assert!(matches!(
            offer(media(1..2901, 1)),
            Err(SdpError::TooManySsrcs(_))
        ));
    }

    #[test]
    fn malformed_offers_are_errors() {
        assert_eq!(Offer::parse(""), Err(SdpError::NoVersion));
        assert_eq!(Offer::parse("v=1\r\n"), Err(SdpError::NoVersion));
        assert_eq!(Offer::parse("v=0\r\ns=-\r\n"), Err(SdpError::NoMedia));
        assert!(matches!(
            Offer::parse("v=0\r\nbogus\r\n"),
            Err(SdpError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            Offer::parse("v=0\r\nm=audio x RTP/AVP 0\r\n"),
            Err(SdpError::BadLine { .. })
        ));
        assert!(matches!(
            Offer::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:300 opus/48000\r\n"),
            Err(SdpError::BadLine { .. })
        ));
        assert!(matches!(
            Offer::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\na=ice-ufrag:bad ufrag!\r\n"),
            Err(SdpError::BadLine { .. })
        ));
        assert_eq!(
            Offer::parse(&"v=0\r\n".repeat(20_000)),
            Err(SdpError::TooLarge)
        );
        let many = format!("v=0\r\n{}", "m=audio 9 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert_eq!(Offer::parse(&many), Err(SdpError::TooManyMedia));
        // Every truncation and many byte flips of a real offer: errors or offers, never panics.
        let full = chrome_offer("actpass");
        for cut in 0..full.len() {
            if full.is_char_boundary(cut) {
                if let Ok(o) = Offer::parse(&full[..cut]) {
                    let _ = answer(&o, Endpoint::Whip, &cfg());
                }
            }
        }
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..2000 {
            let mut b = full.clone().into_bytes();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % b.len();
                b[i] = b" :/=\r\n0aZ*~"[(x >> 8) as usize % 11];
            }
            if let Ok(s) = String::from_utf8(b) {
                if let Ok(o) = Offer::parse(&s) {
                    let _ = answer(&o, Endpoint::Whep, &cfg());
                }
            }
        }
    }

    /// WHIP: the publisher's RTX stream of each primary SSRC is its FID partner with the RTX
    /// payload type of its first codec; without RTX in the offer there is none, FID or not.
    #[test]
    fn whip_records_the_publishers_rtx_streams() {
        let o = Offer::parse(&chrome_offer("actpass")).unwrap();
        let a = answer(&o, Endpoint::Whip, &cfg()).unwrap();
        let video = &a.media[1];
        assert_eq!(video.rtx_ssrcs, [(1111, 2222)]);
        assert_eq!(video.source_rtx_of(1111), Some((97, 2222)));
        assert_eq!(video.source_rtx_of(2222), None, "not a primary");
        assert!(a.media[0].rtx.is_empty() && a.media[0].rtx_ssrcs.is_empty());
        // RTX whose apt names a codec we do not take, or nothing, is left out.
        let odd = chrome_offer("actpass")
            .replace("a=fmtp:97 apt=96", "a=fmtp:97 apt=101")
            .replace("a=fmtp:46 apt=45", "a=fmtp:46 rtx-time=3000");
        let a = answer(&Offer::parse(&odd).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(a.media[1].rtx.is_empty());
        assert!(!a.sdp.contains("rtx/90000"));
        assert_eq!(a.media[1].rtx_ssrcs, [], "FID without RTX is not recorded");
        // RTX without FID groups and without simulcast by RID: declined.
        let no_fid = chrome_offer("actpass").replace("a=ssrc-group:FID 1111 2222\r\n", "");
        let no_sim = no_fid.replace("a=simulcast:send h;l\r\n", "");
        let a = answer(&Offer::parse(&no_sim).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(a.media[1].rtx.is_empty());
        assert!(!a.sdp.contains("rtx/90000"));
        // Simulcast by RID with the repaired-RID extension names its RTX streams: taken.
        let a = answer(&Offer::parse(&no_fid).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(a.media[1].simulcast.is_some() && !a.media[1].rtx.is_empty());
        // A publisher offering no RTX at all: the same.
        let plain = chrome_offer("actpass")
            .replace("a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n", "")
            .replace("a=rtpmap:46 rtx/90000\r\na=fmtp:46 apt=45\r\n", "");
        let a = answer(&Offer::parse(&plain).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(a.media[1].rtx.is_empty());
        assert_eq!(a.media[1].source_rtx_of(1111), None);
        assert!(!a.sdp.contains("rtx"));
        // The first accepted codec with an RTX gives the stream's RTX payload type.
        let no_vp8_rtx =
            chrome_offer("actpass").replace("a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n", "");
        let a = answer(&Offer::parse(&no_vp8_rtx).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert_eq!(a.media[1].source_rtx_of(1111), Some((46, 2222)));
    }

    /// A Firefox-like WHEP viewer: other payload type numbers, RTX for VP8 and H264, the
    /// transport-wide extension at id 7 with transport-cc feedback.
    fn remapped_viewer(with_rtx: bool, with_twcc: bool) -> String {
        let mut v = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE v\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 120 124 126 127\r\na=mid:v\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=fingerprint:"
            .to_owned()
            + FP
            + "\r\na=setup:actpass\r\na=rtcp-mux\r\na=recvonly\r\n\
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=rtpmap:120 VP8/90000\r\na=rtcp-fb:120 nack\r\na=rtcp-fb:120 nack pli\r\na=rtcp-fb:120 ccm fir\r\n\
a=rtpmap:126 H264/90000\r\na=fmtp:126 profile-level-id=42e01f;packetization-mode=1\r\n";
        if with_rtx {
            v += "a=rtpmap:124 rtx/90000\r\na=fmtp:124 apt=120\r\n\
a=rtpmap:127 rtx/90000\r\na=fmtp:127 apt=126\r\n";
        }
        if with_twcc {
            v += "a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=rtcp-fb:120 transport-cc\r\n";
        }
        v
    }

    /// WHEP: RTX for each answered codec the viewer offered it for, bound by its own apt; our
    /// media and RTX SSRCs in an FID group; transport-cc and the extension when offered and
    /// sent by the room.
    #[test]
    fn whep_answers_rtx_fid_and_transport_cc() {
        let room = room_with_twcc(&chrome_offer("actpass"));
        let c = AnswerConfig {
            publishers: room.clone(),
            ..cfg()
        };
        let o = Offer::parse(&remapped_viewer(true, true)).unwrap();
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        let v = &a.media[0];
        assert!(v.accepted);
        assert_eq!(
            v.rtx,
            [
                RtxCodec { pt: 124, apt: 120 },
                RtxCodec { pt: 127, apt: 126 }
            ]
        );
        assert_eq!(v.send_ssrc, Some(0x1000));
        assert_eq!(v.send_rtx_ssrc, Some(0x1001));
        assert_eq!(v.twcc_id(), Some(7));
        assert_eq!(
            v.codecs[0].rtcp_fb,
            ["nack", "nack pli", "ccm fir", "transport-cc"]
        );
        for needle in [
            "m=video 3478 UDP/TLS/RTP/SAVPF 120 124 126 127\r\n",
            "a=rtpmap:124 rtx/90000\r\na=fmtp:124 apt=120\r\n",
            "a=rtpmap:127 rtx/90000\r\na=fmtp:127 apt=126\r\n",
            "a=rtcp-fb:120 transport-cc\r\n",
            "a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
            "a=ssrc-group:FID 4096 4097\r\n",
            "a=ssrc:4096 cname:sluice\r\n",
            "a=ssrc:4097 cname:sluice\r\na=ssrc:4097 msid:sluice v\r\n",
        ] {
            assert!(a.sdp.contains(needle), "missing {needle:?} in\n{}", a.sdp);
        }
        // The route's maps: publisher VP8 96 → viewer 120, whose RTX is 124; publisher's
        // transport-wide id 3 → the viewer's 7.
        let pv = room.iter().find(|m| m.kind == MediaKind::Video).unwrap();
        assert_eq!(pt_map(&pv.codecs, &v.codecs)[0], (96, 120));
        assert_eq!(v.rtx_for(120), Some(124));
        assert!(ext_map(&pv.extmaps, &v.extmaps).contains(&(3, 7)));
        // Our parser reads the FID group back.
        let back = Offer::parse(&a.sdp).unwrap();
        assert_eq!(back.media[0].ssrc_groups[0].ssrcs, [0x1000, 0x1001]);
    }

    /// A viewer without RTX gets none (no FID, no RTX SSRC); one without the transport-wide
    /// extension gets no transport-cc; a room whose publisher does not send the extension
    /// answers neither.
    #[test]
    fn whep_without_rtx_or_transport_cc() {
        let room = room_of(&chrome_offer("actpass"));
        let c = AnswerConfig {
            publishers: room,
            ..cfg()
        };
        let o = Offer::parse(&remapped_viewer(false, false)).unwrap();
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        let v = &a.media[0];
        assert!(v.accepted && v.rtx.is_empty());
        assert_eq!(v.send_rtx_ssrc, None);
        assert_eq!(v.twcc_id(), None);
        assert!(!a.sdp.contains("rtx") && !a.sdp.contains("FID"));
        assert!(!a.sdp.contains("transport-cc") && !a.sdp.contains("transport-wide"));
        assert!(a.sdp.contains("a=ssrc:4096 cname:sluice\r\n"));
        assert!(!a.sdp.contains("a=ssrc:4097"));

        // A publisher that did not negotiate the extension: nothing to renumber.
        let no_twcc_publisher = chrome_offer("actpass").replace(
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n",
            "",
        );
        let c = AnswerConfig {
            publishers: room_of(&no_twcc_publisher),
            ..cfg()
        };
        let o = Offer::parse(&remapped_viewer(true, true)).unwrap();
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        assert_eq!(a.media[0].twcc_id(), None);
        assert!(!a.sdp.contains("transport-cc"));
        assert_eq!(a.media[0].send_rtx_ssrc, Some(0x1001), "RTX still answered");
    }

    /// The relay answers NACKs from its own cache: a viewer is answered `nack` even when the
    /// room's publisher did not negotiate it.
    #[test]
    fn whep_nack_does_not_depend_on_the_publisher() {
        let publisher = chrome_offer("actpass").replace("a=rtcp-fb:96 nack\r\n", "");
        let c = AnswerConfig {
            publishers: room_of(&publisher),
            ..cfg()
        };
        let o = Offer::parse(&remapped_viewer(false, false)).unwrap();
        let a = answer(&o, Endpoint::Whep, &c).unwrap();
        assert_eq!(
            a.media[0].codecs[0].rtcp_fb,
            ["nack", "nack pli", "ccm fir"]
        );
    }

    fn codec(pt: u8, name: &str, clock: u32, fmtp: Option<&str>) -> Codec {
        Codec {
            pt,
            name: name.into(),
            clock_rate: clock,
            channels: None,
            fmtp: fmtp.map(Into::into),
            rtcp_fb: Vec::new(),
        }
    }

    #[test]
    fn payload_type_and_extension_maps() {
        let publisher = vec![
            codec(96, "VP8", 90_000, None),
            codec(98, "VP9", 90_000, Some("profile-id=0")),
            codec(99, "VP9", 90_000, Some("profile-id=2")),
            codec(
                100,
                "H264",
                90_000,
                Some("packetization-mode=1;profile-level-id=42e01f"),
            ),
            codec(
                102,
                "H264",
                90_000,
                Some("packetization-mode=1;profile-level-id=640032"),
            ),
            codec(45, "AV1", 90_000, None),
        ];
        // A Firefox-like viewer with different numbers.
        let viewer = vec![
            codec(120, "VP8", 90_000, Some("max-fs=12288;max-fr=60")),
            codec(121, "VP9", 90_000, Some("max-fs=12288;max-fr=60")),
            codec(
                126,
                "H264",
                90_000,
                Some("profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1"),
            ),
            codec(
                97,
                "H264",
                90_000,
                Some("profile-level-id=42e01f;level-asymmetry-allowed=1"),
            ),
        ];
        assert_eq!(
            pt_map(&publisher, &viewer),
            vec![(96, 120), (98, 121), (100, 126)]
        );
        let mut opus_p = codec(111, "opus", 48_000, None);
        opus_p.channels = Some(2);
        let mut opus_v = codec(109, "OPUS", 48_000, Some("maxplaybackrate=48000"));
        opus_v.channels = Some(2);
        assert_eq!(pt_map(&[opus_p], &[opus_v]), vec![(111, 109)]);

        let e = |id, uri: &str| Extmap {
            id,
            direction: None,
            uri: uri.into(),
        };
        let pe = vec![
            e(4, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            e(
                2,
                "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            ),
            e(13, "urn:3gpp:video-orientation"),
        ];
        let ve = vec![
            e(3, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            e(4, "urn:3gpp:video-orientation"),
        ];
        assert_eq!(ext_map(&pe, &ve), vec![(4, 3), (13, 4)]);
    }

    /// A WHIP video section as Chromium offers three-encoding simulcast: RIDs and the RID
    /// extensions, no `a=ssrc` lines; `extra` goes after the `a=rid` lines.
    fn simulcast_offer(rids: &str, simulcast: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\na=fingerprint:{FP}\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=sendonly\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
{rids}{simulcast}"
        )
    }

    fn simulcast_of(o: &str) -> Result<Option<Simulcast>, SdpError> {
        let o = Offer::parse(o).unwrap();
        answer(&o, Endpoint::Whip, &cfg()).map(|a| a.media[0].simulcast.clone())
    }

    #[test]
    fn whip_simulcast_is_answered_with_recv_rids_in_the_offer_order() {
        let o = simulcast_offer(
            "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n",
            "a=simulcast:send q;h;f\r\n",
        );
        let a = answer(&Offer::parse(&o).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        let sc = a.media[0].simulcast.clone().unwrap();
        // No restrictions: the declared order, lowest first.
        assert_eq!(sc.layers, ["q", "h", "f"]);
        assert_eq!(sc.layer_of(b"f"), Some(2));
        assert_eq!(sc.layer_of(b"x"), None);
        for needle in [
            "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n",
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
        ] {
            assert!(a.sdp.contains(needle), "missing {needle:?} in\n{}", a.sdp);
        }
        // RTX is taken: its streams are named by repaired RID.
        assert!(
            a.sdp
                .contains("a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"),
            "{}",
            a.sdp
        );
        let no_rrid = o.replace(
            "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
            "",
        );
        let b = answer(&Offer::parse(&no_rrid).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert!(
            b.media[0].simulcast.is_some() && b.media[0].rtx.is_empty(),
            "{}",
            b.sdp
        );
        // The answer parses back as what it says.
        let back = Offer::parse(&a.sdp).unwrap();
        assert_eq!(back.media[0].simulcast.as_deref(), Some("recv q;h;f"));
    }

    #[test]
    fn simulcast_layers_follow_declared_restrictions() {
        // Resolutions given (in any order of declaration): ascending pixels.
        let sc = simulcast_of(&simulcast_offer(
            "a=rid:hi send max-width=1280;max-height=720\r\n\
a=rid:lo send pt=96;max-width=320;max-height=180\r\n\
a=rid:mid send max-fs=900\r\n",
            "a=simulcast:send hi;lo;mid\r\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(sc.layers, ["lo", "mid", "hi"]);
        assert_eq!(sc.offered, ["hi", "lo", "mid"]);
        // Bit rates only.
        let sc = simulcast_of(&simulcast_offer(
            "a=rid:a send max-br=2500000\r\na=rid:b send max-br=150000\r\n",
            "a=simulcast:send a;~b\r\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(sc.layers, ["b", "a"]);
        // Restrictions on some RIDs only: the declared order.
        let sc = simulcast_of(&simulcast_offer(
            "a=rid:a send max-br=2500000\r\na=rid:b send\r\n",
            "a=simulcast:send a,x;b\r\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(sc.layers, ["a", "b"]);
    }

    #[test]
    fn simulcast_that_cannot_be_taken_is_refused_or_declined() {
        let refused =
            |rids: &str, sc: &str, why: &str| match simulcast_of(&simulcast_offer(rids, sc)) {
                Err(SdpError::Simulcast { reason, .. }) => assert_eq!(reason, why),
                other => panic!("{rids}{sc}: {other:?}"),
            };
        refused(
            "a=rid:a send\r\na=rid:b send\r\na=rid:c send\r\na=rid:d send\r\n",
            "a=simulcast:send a;b;c;d\r\n",
            "more than three simulcast streams",
        );
        refused(
            "a=rid:a send\r\n",
            "a=simulcast:send a;b\r\n",
            "a=simulcast names a RID without a=rid",
        );
        refused(
            "a=rid:a send\r\na=rid:b recv\r\n",
            "a=simulcast:send a;b\r\n",
            "a=simulcast:send names a recv RID",
        );
        refused(
            "a=rid:a sideways\r\n",
            "a=simulcast:send a\r\n",
            "bad a=rid",
        );
        refused(
            "a=rid:a send max-width=wide\r\n",
            "a=simulcast:send a\r\n",
            "bad a=rid",
        );
        refused(
            "a=rid:a send\r\n",
            "a=simulcast:send a;a\r\n",
            "a RID twice in a=simulcast",
        );
        refused(
            "a=rid:a send\r\n",
            "a=simulcast:send\r\n",
            "bad a=simulcast",
        );
        refused(
            "a=rid:a send\r\n",
            "a=simulcast:send a;b!c\r\n",
            "bad RID in a=simulcast",
        );
        let long = "r".repeat(MAX_RID_LEN + 1);
        refused(
            &format!("a=rid:{long} send\r\n"),
            &format!("a=simulcast:send {long}\r\n"),
            "bad RID in a=simulcast",
        );
        // Declined (answered without simulcast): one stream, receive-only simulcast, no RID
        // extension to tell the layers apart.
        assert_eq!(
            simulcast_of(&simulcast_offer(
                "a=rid:a send\r\n",
                "a=simulcast:send a\r\n"
            ))
            .unwrap(),
            None
        );
        assert_eq!(
            simulcast_of(&simulcast_offer(
                "a=rid:a recv\r\n",
                "a=simulcast:recv a\r\n"
            ))
            .unwrap(),
            None
        );
        let no_ext = simulcast_offer(
            "a=rid:a send\r\na=rid:b send\r\n",
            "a=simulcast:send a;b\r\n",
        )
        .replace(
            "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n",
            "",
        );
        let a = answer(&Offer::parse(&no_ext).unwrap(), Endpoint::Whip, &cfg()).unwrap();
        assert_eq!(a.media[0].simulcast, None);
        assert!(!a.sdp.contains("a=simulcast"), "{}", a.sdp);
    }
}
