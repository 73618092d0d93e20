//! RTP packets (RFC 3550 §5.1) and RTP header extensions (RFC 3550 §5.3.1, RFC 8285).
//!
//! Owns: the read-only view [`RtpPacket`], the extension iterator [`Extensions`], and the
//! in-place rewriter [`RtpMut`] the engine uses for a route's rewrite (SSRC, payload type,
//! sequence number, timestamp, extension ids). May not touch: SRTP (the authentication tag
//! trailing an SRTP packet is the caller's to strip before building a view), sockets, clock.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! |                           timestamp                           |
//! |           synchronization source (SSRC) identifier            |
//! |            contributing source (CSRC) identifiers             |  (CC of them)
//! |      defined by profile       |           length              |  (if X)
//! |                        header extension                       |
//! ```

use core::ops::Range;

use super::{be16, be32, put16, put32};

/// Length of the fixed RTP header (RFC 3550 §5.1).
pub const FIXED_HEADER_LEN: usize = 12;
/// "Defined by profile" value of the one-byte extension form (RFC 8285 §4.2).
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Two-byte extension form (RFC 8285 §4.3): `0x100` followed by 4 application bits.
pub const TWO_BYTE_PROFILE_MASK: u16 = 0xFFF0;
/// The `0x100X` value with the application bits cleared.
pub const TWO_BYTE_PROFILE: u16 = 0x1000;

/// Why bytes are not a valid RTP packet, or why a rewrite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the fixed header plus the CSRC list it announces.
    #[error("RTP packet too short")]
    TooShort,
    /// The version field is not 2.
    #[error("RTP version {0} (expected 2)")]
    BadVersion(u8),
    /// The padding count is zero or exceeds the payload (RFC 3550 §5.1, P bit).
    #[error("RTP padding count inconsistent with packet length")]
    BadPadding,
    /// The header extension overruns the packet, or an RFC 8285 element overruns the extension.
    #[error("RTP header extension malformed")]
    BadExtension,
    /// The packet has no header extension, or not one in an RFC 8285 form.
    #[error("RTP packet has no RFC 8285 header extension")]
    NoExtension,
    /// An extension id mapping would produce an id the packet's form cannot carry
    /// (one-byte form: 1–14; two-byte form: 1–255).
    #[error("extension id mapping {from} -> {to} invalid for this extension form")]
    BadExtensionMap { from: u8, to: u8 },
    /// A payload type above 127 was asked for.
    #[error("payload type {0} out of range 0-127")]
    BadPayloadType(u8),
    /// The packet carries no element with this extension id.
    #[error("RTP packet has no header extension element with id {0}")]
    MissingExtension(u8),
    /// The value does not fit the element's form (one-byte form: 1–16 bytes; two-byte form:
    /// 0–255), or the rebuilt extension block would be too long.
    #[error("extension value of {0} bytes does not fit")]
    ValueTooLong(usize),
    /// The buffer has no room for the packet to grow into.
    #[error("no room to grow the packet by {0} bytes")]
    NoRoom(usize),
}

/// Which RFC 8285 form a header extension block uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionForm {
    /// `0xBEDE`: 4-bit id, 4-bit length-minus-one (RFC 8285 §4.2).
    OneByte,
    /// `0x100X`: 8-bit id, 8-bit length (RFC 8285 §4.3); carries the 4 application bits.
    TwoByte { app_bits: u8 },
    /// Any other profile-defined extension (RFC 3550 §5.3.1); its contents are opaque.
    Other(u16),
}

impl ExtensionForm {
    fn from_profile(profile: u16) -> Self {
        if profile == ONE_BYTE_PROFILE {
            ExtensionForm::OneByte
        } else if profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE {
            ExtensionForm::TwoByte {
                app_bits: (profile & 0x000F) as u8,
            }
        } else {
            ExtensionForm::Other(profile)
        }
    }
}

/// Positions found by parsing; shared by the read-only and the mutable views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// Fixed header + CSRCs + extension.
    header_len: usize,
    /// End of the payload (start of padding).
    payload_end: usize,
    /// Extension profile and the range of its data (after the 4-byte extension header).
    ext: Option<(ExtensionForm, usize, usize)>,
}

/// Validates an RTP packet and returns where its parts are (RFC 3550 §5.1, §5.3.1).
fn layout(buf: &[u8]) -> Result<Layout, RtpError> {
    let first = *buf.first().ok_or(RtpError::TooShort)?;
    if buf.len() < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort);
    }
    let version = first >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let cc = usize::from(first & 0x0F);
    let mut header_len = FIXED_HEADER_LEN + 4 * cc;
    if buf.len() < header_len {
        return Err(RtpError::TooShort);
    }
    let mut ext = None;
    if first & 0x10 != 0 {
        // RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the data.
        let profile = be16(buf, header_len).ok_or(RtpError::BadExtension)?;
        let words = be16(buf, header_len + 2).ok_or(RtpError::BadExtension)?;
        let start = header_len + 4;
        let end = start + 4 * usize::from(words);
        if end > buf.len() {
            return Err(RtpError::BadExtension);
        }
        let form = ExtensionForm::from_profile(profile);
        validate_elements(form, &buf[start..end])?;
        ext = Some((form, start, end));
        header_len = end;
    }
    let mut payload_end = buf.len();
    if first & 0x20 != 0 {
        // RFC 3550 §5.1: the last octet counts the padding octets, itself included.
        let pad = usize::from(buf[buf.len() - 1]);
        if pad == 0 || pad > buf.len() - header_len {
            return Err(RtpError::BadPadding);
        }
        payload_end -= pad;
    }
    Ok(Layout {
        header_len,
        payload_end,
        ext,
    })
}

/// Walks RFC 8285 elements once so that iteration afterwards cannot fail.
fn validate_elements(form: ExtensionForm, data: &[u8]) -> Result<(), RtpError> {
    let mut it = RawElements { form, data, pos: 0 };
    loop {
        match it.step() {
            Step::Element(..) => {}
            Step::End => return Ok(()),
            Step::Malformed => return Err(RtpError::BadExtension),
        }
    }
}

enum Step {
    /// id, start of data, end of data (indexes into the extension data).
    Element(u8, usize, usize),
    End,
    Malformed,
}

struct RawElements<'a> {
    form: ExtensionForm,
    data: &'a [u8],
    pos: usize,
}

impl RawElements<'_> {
    fn step(&mut self) -> Step {
        let data = self.data;
        loop {
            let Some(&b) = data.get(self.pos) else {
                return Step::End;
            };
            match self.form {
                ExtensionForm::OneByte => {
                    let id = b >> 4;
                    if id == 0 {
                        // RFC 8285 §4.2: a zero byte is padding between or after elements.
                        self.pos += 1;
                        continue;
                    }
                    if id == 15 {
                        // RFC 8285 §4.2: id 15 stops processing of the whole block.
                        self.pos = data.len();
                        return Step::End;
                    }
                    let start = self.pos + 1;
                    let end = start + usize::from(b & 0x0F) + 1;
                    if end > data.len() {
                        self.pos = data.len();
                        return Step::Malformed;
                    }
                    self.pos = end;
                    return Step::Element(id, start, end);
                }
                ExtensionForm::TwoByte { .. } => {
                    if b == 0 {
                        // RFC 8285 §4.3: padding byte.
                        self.pos += 1;
                        continue;
                    }
                    let Some(&len) = data.get(self.pos + 1) else {
                        self.pos = data.len();
                        return Step::Malformed;
                    };
                    let start = self.pos + 2;
                    let end = start + usize::from(len);
                    if end > data.len() {
                        self.pos = data.len();
                        return Step::Malformed;
                    }
                    self.pos = end;
                    return Step::Element(b, start, end);
                }
                ExtensionForm::Other(_) => return Step::End,
            }
        }
    }
}

/// Allocation-free iterator over RFC 8285 header extension elements as `(id, data)`.
///
/// Yields nothing for an extension in a non-RFC 8285 form. Stops at a one-byte id 15.
#[derive(Debug, Clone)]
pub struct Extensions<'a> {
    form: ExtensionForm,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Extensions<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let mut raw = RawElements {
            form: self.form,
            data: self.data,
            pos: self.pos,
        };
        let step = raw.step();
        self.pos = raw.pos;
        match step {
            Step::Element(id, s, e) => self.data.get(s..e).map(|d| (id, d)),
            // Elements were validated when the packet was parsed; a malformed one ends iteration.
            Step::End | Step::Malformed => None,
        }
    }
}

/// A validated, read-only view of an RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    layout: Layout,
}

impl<'a> RtpPacket<'a> {
    /// Parses and validates `buf` as one RTP packet: version 2, CSRC list, header extension
    /// (and its RFC 8285 elements) and padding all within the buffer.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let layout = layout(buf)?;
        Ok(RtpPacket { buf, layout })
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Version field (always 2 for a parsed packet).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// P bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// X bit.
    pub fn extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }
    /// CC field: number of CSRCs.
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0F
    }
    /// M bit.
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// PT field (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7F
    }
    /// Sequence number.
    pub fn sequence(&self) -> u16 {
        be16(self.buf, 2).unwrap_or(0)
    }
    /// RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        be32(self.buf, 4).unwrap_or(0)
    }
    /// Synchronization source.
    pub fn ssrc(&self) -> u32 {
        be32(self.buf, 8).unwrap_or(0)
    }
    /// Contributing sources, in order.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let end = FIXED_HEADER_LEN + 4 * usize::from(self.csrc_count());
        self.buf
            .get(FIXED_HEADER_LEN..end)
            .unwrap_or(&[])
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// Length of fixed header, CSRCs and header extension: where the payload starts.
    pub fn header_len(&self) -> usize {
        self.layout.header_len
    }
    /// Byte range of the payload within the packet (padding excluded).
    pub fn payload_range(&self) -> Range<usize> {
        self.layout.header_len..self.layout.payload_end
    }
    /// The payload (padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        self.buf.get(self.payload_range()).unwrap_or(&[])
    }
    /// Number of padding octets at the end (0 when P is clear).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.layout.payload_end
    }
    /// Header extension "defined by profile" value, if the packet has an extension.
    pub fn extension_profile(&self) -> Option<u16> {
        self.layout.ext.map(|(form, _, _)| match form {
            ExtensionForm::OneByte => ONE_BYTE_PROFILE,
            ExtensionForm::TwoByte { app_bits } => TWO_BYTE_PROFILE | u16::from(app_bits),
            ExtensionForm::Other(p) => p,
        })
    }
    /// The extension form, if the packet has an extension.
    pub fn extension_form(&self) -> Option<ExtensionForm> {
        self.layout.ext.map(|(form, _, _)| form)
    }
    /// Raw header extension data (after its 4-byte header).
    pub fn extension_data(&self) -> Option<&'a [u8]> {
        let (_, s, e) = self.layout.ext?;
        self.buf.get(s..e)
    }
    /// RFC 8285 elements as `(id, data)`.
    pub fn extensions(&self) -> Extensions<'a> {
        match self.layout.ext {
            Some((form, s, e)) => Extensions {
                form,
                data: self.buf.get(s..e).unwrap_or(&[]),
                pos: 0,
            },
            None => Extensions {
                form: ExtensionForm::Other(0),
                data: &[],
                pos: 0,
            },
        }
    }
    /// Data of the first extension element with `id`.
    pub fn extension_by_id(&self, id: u8) -> Option<&'a [u8]> {
        self.extensions().find(|&(i, _)| i == id).map(|(_, d)| d)
    }
}

/// An RTP packet in a mutable buffer, validated once, rewritten in place.
///
/// Every setter keeps the packet valid: lengths never change.
/// The SSRC field of an RTP or SRTP header (bytes 8..12, in the clear, RFC 3711 §3.1),
/// read without validating the rest; `None` when `buf` is shorter than 12 bytes.
#[inline]
pub fn header_ssrc(buf: &[u8]) -> Option<u32> {
    if buf.len() < 12 {
        return None;
    }
    be32(buf, 8)
}

#[derive(Debug)]
pub struct RtpMut<'a> {
    buf: &'a mut [u8],
    layout: Layout,
}

impl<'a> RtpMut<'a> {
    /// Validates `buf` as [`RtpPacket::parse`] does.
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        let layout = layout(buf)?;
        Ok(RtpMut { buf, layout })
    }

    /// Read-only view of the current contents.
    pub fn packet(&self) -> RtpPacket<'_> {
        RtpPacket {
            buf: self.buf,
            layout: self.layout,
        }
    }

    /// Sets the SSRC.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        put32(self.buf, 8, ssrc);
    }
    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: u16) {
        put16(self.buf, 2, seq);
    }
    /// Sets the timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        put32(self.buf, 4, ts);
    }
    /// Sets the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.buf[1] = (self.buf[1] & 0x7F) | if marker { 0x80 } else { 0 };
    }
    /// Changes the payload type, keeping the marker bit as it is.
    pub fn set_payload_type(&mut self, pt: u8) -> Result<(), RtpError> {
        if pt > 0x7F {
            return Err(RtpError::BadPayloadType(pt));
        }
        self.buf[1] = (self.buf[1] & 0x80) | pt;
        Ok(())
    }

    /// The value of extension element `id`, writable in place (same length: the packet
    /// layout never changes). `None` when the packet has no such element. This is how a
    /// fixed-size per-receiver value (the transport-wide sequence number) is rewritten.
    pub fn extension_value_mut(&mut self, id: u8) -> Option<&mut [u8]> {
        let (form, s, e) = self.layout.ext?;
        let mut raw = RawElements {
            form,
            data: &self.buf[s..e],
            pos: 0,
        };
        loop {
            match raw.step() {
                Step::Element(eid, start, end) if eid == id => {
                    return self.buf.get_mut(s + start..s + end);
                }
                Step::Element(..) => {}
                Step::End | Step::Malformed => return None,
            }
        }
    }

    /// Rewrites RFC 8285 extension ids in place through `map` (`(from, to)` pairs; the first
    /// matching pair wins; unmapped ids pass unchanged). Returns how many elements changed.
    ///
    /// The map is checked against the packet's form before anything is written, so a refused
    /// map leaves the packet untouched.
    pub fn remap_extension_ids(&mut self, map: &[(u8, u8)]) -> Result<usize, RtpError> {
        let Some((form, s, e)) = self.layout.ext else {
            return Err(RtpError::NoExtension);
        };
        for &(from, to) in map {
            let ok = match form {
                ExtensionForm::OneByte => !(1..=14).contains(&from) || (1..=14).contains(&to),
                ExtensionForm::TwoByte { .. } => from == 0 || to != 0,
                ExtensionForm::Other(_) => return Err(RtpError::NoExtension),
            };
            if !ok {
                return Err(RtpError::BadExtensionMap { from, to });
            }
        }
        let Some(data) = self.buf.get_mut(s..e) else {
            return Err(RtpError::BadExtension);
        };
        let mut changed = 0;
        let mut pos = 0;
        loop {
            let mut raw = RawElements {
                form,
                data: &*data,
                pos,
            };
            let step = raw.step();
            pos = raw.pos;
            let Step::Element(id, start, _) = step else {
                break;
            };
            let Some(&(_, to)) = map.iter().find(|&&(from, _)| from == id) else {
                continue;
            };
            if to == id {
                continue;
            }
            // The id byte sits just before the data: 1 byte back (one-byte form) or 2 (two-byte).
            match form {
                ExtensionForm::OneByte => {
                    if let Some(b) = data.get_mut(start - 1) {
                        *b = (to << 4) | (*b & 0x0F);
                    }
                }
                _ => {
                    if let Some(b) = data.get_mut(start - 2) {
                        *b = to;
                    }
                }
            }
            changed += 1;
        }
        Ok(changed)
    }
}

/// The P bit of the first header octet (RFC 3550 §5.1): the packet ends in padding.
pub const PADDING_BIT: u8 = 0x20;

/// Longest extension block (element data, in bytes) that [`set_extension_value`] rebuilds.
pub const MAX_EXTENSION_BLOCK: usize = 512;

/// Replace the value of the extension element `id` of the RTP packet `buf[..len]` with
/// `value`, growing or shrinking the packet in place: the payload and padding move, `buf`
/// beyond `len` is the room to grow into. Returns the new length. This is for the extensions
/// whose value is a per-receiver string of any length: MID (RFC 8843 §15) and RID / repaired
/// RID (RFC 8852 §3). The other elements, their order and ids are kept; the block is padded
/// with zero bytes to a 32-bit boundary (RFC 8285 §4.1). Nothing is written when an error is
/// returned.
pub fn set_extension_value(
    buf: &mut [u8],
    len: usize,
    id: u8,
    value: &[u8],
) -> Result<usize, RtpError> {
    let l = layout(buf.get(..len).ok_or(RtpError::TooShort)?)?;
    let Some((form, s, e)) = l.ext else {
        return Err(RtpError::NoExtension);
    };
    let fits = match form {
        ExtensionForm::OneByte => (1..=16).contains(&value.len()),
        ExtensionForm::TwoByte { .. } => value.len() <= 255,
        ExtensionForm::Other(_) => return Err(RtpError::NoExtension),
    };
    if !fits {
        return Err(RtpError::ValueTooLong(value.len()));
    }
    // Rebuild the element list into a stack buffer with the new value.
    let mut block = [0u8; MAX_EXTENSION_BLOCK];
    let mut n = 0usize;
    let mut found = false;
    let mut raw = RawElements {
        form,
        data: &buf[s..e],
        pos: 0,
    };
    while let Step::Element(eid, start, end) = raw.step() {
        let data = if eid == id {
            found = true;
            value
        } else {
            &buf[s + start..s + end]
        };
        let head = if matches!(form, ExtensionForm::OneByte) {
            1
        } else {
            2
        };
        if n + head + data.len() > block.len() {
            return Err(RtpError::ValueTooLong(n + head + data.len()));
        }
        if head == 1 {
            block[n] = (eid << 4) | (data.len() as u8 - 1);
        } else {
            block[n] = eid;
            block[n + 1] = data.len() as u8;
        }
        block[n + head..n + head + data.len()].copy_from_slice(data);
        n += head + data.len();
    }
    if !found {
        return Err(RtpError::MissingExtension(id));
    }
    let new_block = n.div_ceil(4) * 4;
    let old_block = e - s;
    let new_len = len - old_block + new_block;
    if new_len > buf.len() {
        return Err(RtpError::NoRoom(new_len - len));
    }
    // Move the payload and padding, then write the block and its length in words.
    buf.copy_within(e..len, s + new_block);
    buf[s..s + n].copy_from_slice(&block[..n]);
    buf[s + n..s + new_block].fill(0);
    let _ = put16(buf, s - 2, (new_block / 4) as u16);
    Ok(new_len)
}

/// A padding-only RTP packet (RFC 3550 §5.1, P bit; what bandwidth probes are made of, as
/// libwebrtc sends them on an RTX stream): no payload, `padding` bytes of padding (1–255, the
/// last one the count), and a one-byte-form extension block (RFC 8285 §4.2) carrying the
/// elements given (ids 1–14, values 1–16 bytes).
#[derive(Debug, Clone, Copy)]
pub struct PaddingPacket<'a> {
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub padding: u8,
    /// Up to four `(id, value)` elements, in order.
    pub elements: &'a [(u8, &'a [u8])],
}

/// Write `p` into `out`; returns its length.
pub fn write_padding_only(out: &mut [u8], p: &PaddingPacket<'_>) -> Result<usize, RtpError> {
    if p.payload_type > 127 {
        return Err(RtpError::BadPayloadType(p.payload_type));
    }
    if p.padding == 0 {
        return Err(RtpError::BadPadding);
    }
    let mut ext = 0usize;
    for &(id, v) in p.elements {
        if !(1..=14).contains(&id) {
            return Err(RtpError::BadExtensionMap { from: id, to: id });
        }
        if !(1..=16).contains(&v.len()) {
            return Err(RtpError::ValueTooLong(v.len()));
        }
        ext += 1 + v.len();
    }
    let block = ext.div_ceil(4) * 4;
    let ext_len = if p.elements.is_empty() { 0 } else { 4 + block };
    let len = FIXED_HEADER_LEN + ext_len + usize::from(p.padding);
    if len > out.len() {
        return Err(RtpError::NoRoom(len - out.len()));
    }
    let x = if ext_len > 0 { 0x10 } else { 0 };
    out[0] = 0x80 | 0x20 | x;
    out[1] = p.payload_type;
    out[2..4].copy_from_slice(&p.sequence.to_be_bytes());
    out[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&p.ssrc.to_be_bytes());
    let mut at = FIXED_HEADER_LEN;
    if ext_len > 0 {
        out[at..at + 2].copy_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
        out[at + 2..at + 4].copy_from_slice(&((block / 4) as u16).to_be_bytes());
        at += 4;
        let start = at;
        for &(id, v) in p.elements {
            out[at] = (id << 4) | (v.len() as u8 - 1);
            out[at + 1..at + 1 + v.len()].copy_from_slice(v);
            at += 1 + v.len();
        }
        out[at..start + block].fill(0);
        at = start + block;
    }
    let end = at + usize::from(p.padding);
    out[at..end - 1].fill(0);
    out[end - 1] = p.padding;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padding_only_packet_parses_back() {
        let mut out = [0u8; 400];
        let p = PaddingPacket {
            payload_type: 97,
            sequence: 7,
            timestamp: 9000,
            ssrc: 0x1234_5678,
            padding: 224,
            elements: &[(3, &[0, 42]), (9, b"1")],
        };
        let n = write_padding_only(&mut out, &p).unwrap();
        assert_eq!(n, 12 + 4 + 8 + 224);
        let r = RtpPacket::parse(&out[..n]).unwrap();
        assert!(r.padding());
        assert_eq!(r.padding_len(), 224);
        assert!(r.payload().is_empty());
        assert_eq!(
            (r.payload_type(), r.sequence(), r.ssrc()),
            (97, 7, 0x1234_5678)
        );
        assert_eq!(r.extension_by_id(3), Some(&[0u8, 42][..]));
        assert_eq!(r.extension_by_id(9), Some(&b"1"[..]));
        let bad = PaddingPacket {
            elements: &[(15, &[0])],
            ..p
        };
        assert!(write_padding_only(&mut out, &bad).is_err());
        assert!(matches!(
            write_padding_only(&mut out[..100], &p),
            Err(RtpError::NoRoom(_))
        ));
    }

    fn header(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut v = vec![0x80, pt];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        v
    }

    #[test]
    fn fixed_header_fields() {
        let mut p = header(0x80 | 96, 0x1234, 0xdead_beef, 0x0102_0304);
        p.extend_from_slice(b"payload");
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.version(), 2);
        assert!(r.marker());
        assert_eq!(r.payload_type(), 96);
        assert_eq!(r.sequence(), 0x1234);
        assert_eq!(r.timestamp(), 0xdead_beef);
        assert_eq!(r.ssrc(), 0x0102_0304);
        assert_eq!(r.header_len(), 12);
        assert_eq!(r.payload(), b"payload");
        assert_eq!(r.padding_len(), 0);
        assert!(!r.extension());
        assert_eq!(r.extensions().count(), 0);
    }

    #[test]
    fn csrcs_and_padding() {
        let mut p = header(111, 1, 2, 3);
        p[0] = 0x80 | 0x20 | 2; // P, CC=2
        p.extend_from_slice(&0xaaaa_aaaau32.to_be_bytes());
        p.extend_from_slice(&0xbbbb_bbbbu32.to_be_bytes());
        p.extend_from_slice(b"xyz");
        p.extend_from_slice(&[0, 0, 3]);
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.csrc_count(), 2);
        assert_eq!(r.csrcs().collect::<Vec<_>>(), [0xaaaa_aaaa, 0xbbbb_bbbb]);
        assert_eq!(r.header_len(), 20);
        assert_eq!(r.payload(), b"xyz");
        assert_eq!(r.payload_range(), 20..23);
        assert_eq!(r.padding_len(), 3);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(RtpPacket::parse(&[]).unwrap_err(), RtpError::TooShort);
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort
        );
        let mut p = header(0, 0, 0, 0);
        p[0] = 0x40;
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::BadVersion(1));
        let mut p = header(0, 0, 0, 0);
        p[0] = 0x81; // CC=1 but no CSRC
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::TooShort);
        // Padding count larger than the payload.
        let mut p = header(0, 0, 0, 0);
        p[0] |= 0x20;
        p.extend_from_slice(&[1, 2, 9]);
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::BadPadding);
        // Padding count zero.
        let mut p = header(0, 0, 0, 0);
        p[0] |= 0x20;
        p.push(0);
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::BadPadding);
        // Padding covering the whole payload is fine.
        let mut p = header(0, 0, 0, 0);
        p[0] |= 0x20;
        p.extend_from_slice(&[0, 2]);
        assert_eq!(RtpPacket::parse(&p).unwrap().payload(), b"");
        // Extension length overruns.
        let mut p = header(0, 0, 0, 0);
        p[0] |= 0x10;
        p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x10, 0xff, 0, 0]);
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::BadExtension);
        // One-byte element overruns its block.
        let mut p = header(0, 0, 0, 0);
        p[0] |= 0x10;
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x13, 1, 2, 3]);
        assert_eq!(RtpPacket::parse(&p).unwrap_err(), RtpError::BadExtension);
    }

    fn one_byte_packet() -> Vec<u8> {
        let mut p = header(100, 7, 8, 9);
        p[0] |= 0x10;
        // id 1 len 1 (0x10), id 3 len 3, padding, id 5 len 2, then padding to 12 bytes.
        p.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
        p.extend_from_slice(&[0x10, 0xAA, 0x32, 1, 2, 3, 0x00, 0x51, 0xB1, 0xB2, 0, 0]);
        p.extend_from_slice(b"media");
        p
    }

    fn two_byte_packet() -> Vec<u8> {
        let mut p = header(100, 7, 8, 9);
        p[0] |= 0x10;
        // id 1 len 0, id 200 len 3, padding, id 16 len 1, then padding to 12 bytes.
        p.extend_from_slice(&[0x10, 0x05, 0, 3]);
        p.extend_from_slice(&[1, 0, 200, 3, 7, 8, 9, 0, 16, 1, 0x42, 0]);
        p.extend_from_slice(b"media");
        p
    }

    #[test]
    fn one_byte_extensions() {
        let p = one_byte_packet();
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.extension_form(), Some(ExtensionForm::OneByte));
        assert_eq!(r.extension_profile(), Some(0xBEDE));
        let got: Vec<_> = r.extensions().collect();
        assert_eq!(
            got,
            vec![
                (1, &[0xAA][..]),
                (3, &[1, 2, 3][..]),
                (5, &[0xB1, 0xB2][..])
            ]
        );
        assert_eq!(r.header_len(), 12 + 4 + 12);
        assert_eq!(r.payload(), b"media");
        assert_eq!(r.extension_by_id(3), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn one_byte_id_15_stops() {
        let mut p = header(100, 7, 8, 9);
        p[0] |= 0x10;
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x20, 0x11, 0xF3, 0x00]);
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.extensions().collect::<Vec<_>>(), vec![(2, &[0x11][..])]);
    }

    #[test]
    fn two_byte_extensions() {
        let p = two_byte_packet();
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(
            r.extension_form(),
            Some(ExtensionForm::TwoByte { app_bits: 5 })
        );
        assert_eq!(r.extension_profile(), Some(0x1005));
        let got: Vec<_> = r.extensions().collect();
        assert_eq!(
            got,
            vec![(1, &[][..]), (200, &[7, 8, 9][..]), (16, &[0x42][..])]
        );
        assert_eq!(r.payload(), b"media");
    }

    #[test]
    fn other_profile_is_opaque() {
        let mut p = header(100, 7, 8, 9);
        p[0] |= 0x10;
        p.extend_from_slice(&[0x12, 0x34, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]);
        let r = RtpPacket::parse(&p).unwrap();
        assert_eq!(r.extension_form(), Some(ExtensionForm::Other(0x1234)));
        assert_eq!(r.extension_data(), Some(&[0xFF; 4][..]));
        assert_eq!(r.extensions().count(), 0);
    }

    #[test]
    fn setters_rewrite_in_place() {
        let mut p = one_byte_packet();
        p[1] |= 0x80; // marker
        let mut m = RtpMut::parse(&mut p).unwrap();
        m.set_ssrc(0xCAFE_F00D);
        m.set_sequence(0xFFFE);
        m.set_timestamp(123_456);
        m.set_payload_type(111).unwrap();
        assert_eq!(
            m.set_payload_type(128).unwrap_err(),
            RtpError::BadPayloadType(128)
        );
        let r = m.packet();
        assert_eq!(r.ssrc(), 0xCAFE_F00D);
        assert_eq!(r.sequence(), 0xFFFE);
        assert_eq!(r.timestamp(), 123_456);
        assert_eq!(r.payload_type(), 111);
        assert!(r.marker(), "PT change keeps the marker");
        m.set_marker(false);
        assert!(!m.packet().marker());
        assert_eq!(m.packet().payload_type(), 111);
        assert_eq!(m.packet().payload(), b"media");
    }

    #[test]
    fn remap_one_byte() {
        let mut p = one_byte_packet();
        let mut m = RtpMut::parse(&mut p).unwrap();
        assert_eq!(m.remap_extension_ids(&[(3, 9), (5, 1), (7, 2)]).unwrap(), 2);
        let got: Vec<_> = m
            .packet()
            .extensions()
            .map(|(id, d)| (id, d.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![(1, vec![0xAA]), (9, vec![1, 2, 3]), (1, vec![0xB1, 0xB2])]
        );
        // A target the one-byte form cannot carry is refused and nothing changes.
        let before = p.clone();
        let mut m = RtpMut::parse(&mut p).unwrap();
        assert_eq!(
            m.remap_extension_ids(&[(1, 4), (9, 15)]).unwrap_err(),
            RtpError::BadExtensionMap { from: 9, to: 15 }
        );
        assert_eq!(p, before);
    }

    #[test]
    fn remap_two_byte() {
        let mut p = two_byte_packet();
        let mut m = RtpMut::parse(&mut p).unwrap();
        assert_eq!(m.remap_extension_ids(&[(200, 3), (16, 250)]).unwrap(), 2);
        let got: Vec<_> = m.packet().extensions().map(|(id, _)| id).collect();
        assert_eq!(got, vec![1, 3, 250]);
        assert_eq!(
            m.remap_extension_ids(&[(1, 0)]).unwrap_err(),
            RtpError::BadExtensionMap { from: 1, to: 0 }
        );
        let mut plain = header(0, 0, 0, 0);
        let mut m = RtpMut::parse(&mut plain).unwrap();
        assert_eq!(
            m.remap_extension_ids(&[(1, 2)]).unwrap_err(),
            RtpError::NoExtension
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..96),
                                       map in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..4)) {
            if let Ok(r) = RtpPacket::parse(&bytes) {
                let _ = (r.version(), r.padding(), r.extension(), r.marker(), r.payload_type());
                let _ = (r.sequence(), r.timestamp(), r.ssrc(), r.csrcs().count());
                prop_assert!(r.payload_range().end <= bytes.len());
                prop_assert!(r.header_len() <= r.payload_range().end);
                let _ = (r.padding_len(), r.extension_data(), r.extension_profile());
                for (_, d) in r.extensions() {
                    prop_assert!(d.len() <= bytes.len());
                }
            }
            // Force version 2 so that the mutators get past the first check more often.
            if let Some(b) = bytes.first_mut() { *b = (*b & 0x3F) | 0x80; }
            let len = bytes.len();
            if let Ok(mut m) = RtpMut::parse(&mut bytes) {
                m.set_ssrc(1);
                m.set_sequence(2);
                m.set_timestamp(3);
                m.set_marker(true);
                let _ = m.set_payload_type(96);
                let _ = m.remap_extension_ids(&map);
                // The rewrite keeps the packet valid.
                prop_assert!(RtpPacket::parse(&bytes).is_ok());
            }
            prop_assert_eq!(bytes.len(), len);
        }
    }

    /// PT 96, seq 7, one-byte extensions: id 1 (MID) = "0", id 3 (audio level) = 0x55; payload
    /// "media!" and 2 bytes of padding.
    fn with_mid() -> Vec<u8> {
        let mut p = header(96, 7, 9, 0x11);
        p[0] |= 0x10 | 0x20;
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, b'0', 0x30, 0x55]);
        p.extend_from_slice(b"media!");
        p.extend_from_slice(&[0, 2]);
        p
    }

    #[test]
    fn extension_value_grows_and_shrinks_in_place() {
        let orig = with_mid();
        let mut buf = orig.clone();
        buf.resize(64, 0xEE);
        let n = set_extension_value(&mut buf, orig.len(), 1, b"video-1").unwrap();
        assert_eq!(
            n,
            orig.len() + 8,
            "4 + 7 + 2 = 13 bytes of elements, padded to 16"
        );
        let r = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(r.extension_by_id(1), Some(&b"video-1"[..]));
        assert_eq!(r.extension_by_id(3), Some(&[0x55][..]));
        assert_eq!(r.payload(), b"media!");
        assert_eq!(r.padding_len(), 2);
        assert_eq!((r.sequence(), r.ssrc()), (7, 0x11));
        // And back to one byte: the original bytes exactly.
        let m = set_extension_value(&mut buf, n, 1, b"0").unwrap();
        assert_eq!(&buf[..m], &orig[..]);
    }

    #[test]
    fn extension_value_errors_leave_the_packet_alone() {
        let orig = with_mid();
        let mut buf = orig.clone();
        assert_eq!(
            set_extension_value(&mut buf, orig.len(), 1, b"longer"),
            Err(RtpError::NoRoom(8))
        );
        assert_eq!(
            set_extension_value(&mut buf, orig.len(), 2, b"x"),
            Err(RtpError::MissingExtension(2))
        );
        assert_eq!(
            set_extension_value(&mut buf, orig.len(), 1, &[b'a'; 17]),
            Err(RtpError::ValueTooLong(17))
        );
        assert_eq!(
            set_extension_value(&mut buf, orig.len(), 1, b""),
            Err(RtpError::ValueTooLong(0))
        );
        assert_eq!(buf, orig);
        let mut plain = header(96, 1, 1, 1);
        plain.extend_from_slice(b"x");
        let n = plain.len();
        assert_eq!(
            set_extension_value(&mut plain, n, 1, b"0"),
            Err(RtpError::NoExtension)
        );
    }

    #[test]
    fn two_byte_form_takes_empty_and_long_values() {
        let mut p = header(96, 1, 1, 1);
        p[0] |= 0x10;
        p.extend_from_slice(&[0x10, 0x00, 0, 1, 5, 1, b'a', 0]);
        p.extend_from_slice(b"pl");
        let len = p.len();
        p.resize(400, 0);
        let n = set_extension_value(&mut p, len, 5, &[b'z'; 200]).unwrap();
        let r = RtpPacket::parse(&p[..n]).unwrap();
        assert_eq!(r.extension_by_id(5), Some(&[b'z'; 200][..]));
        assert_eq!(r.payload(), b"pl");
        let n = set_extension_value(&mut p, n, 5, b"").unwrap();
        assert_eq!(
            RtpPacket::parse(&p[..n]).unwrap().extension_by_id(5),
            Some(&b""[..])
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Any packet, any id and value: an error with the bytes untouched, or a packet that
        /// parses with the new value and the same payload.
        #[test]
        fn set_extension_value_on_arbitrary_packets(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..120),
            id in 1u8..15,
            value in proptest::collection::vec(any::<u8>(), 0..20),
            room in 0usize..64,
        ) {
            if let Some(b) = bytes.first_mut() { *b = (*b & 0x3F) | 0x90; }
            if bytes.len() >= 14 { bytes[12] = 0xBE; bytes[13] = 0xDE; }
            let len = bytes.len();
            let before = bytes.clone();
            bytes.resize(len + room, 0);
            match set_extension_value(&mut bytes, len, id, &value) {
                Ok(n) => {
                    let old = RtpPacket::parse(&before).unwrap();
                    let new = RtpPacket::parse(&bytes[..n]).unwrap();
                    prop_assert_eq!(new.extension_by_id(id), Some(&value[..]));
                    prop_assert_eq!(new.payload(), old.payload());
                    prop_assert_eq!(new.padding_len(), old.padding_len());
                }
                Err(_) => prop_assert_eq!(&bytes[..len], &before[..]),
            }
        }
    }
}
