//! The VP8 RTP payload descriptor (RFC 7741 §4.2), read and rewritten in place.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (required)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (optional)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (optional; M set: 15-bit picture ID over two bytes)
//!      +-+-+-+-+-+-+-+-+
//!      |   PictureID   |
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (optional)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (optional)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! A relay that switches one subscriber between simulcast layers, or drops temporal layers,
//! rewrites the picture ID, TL0PICIDX and key index so that the decoder sees one continuous
//! stream (RFC 7741 §4.2, §5). The descriptor's length never changes: a 7-bit picture ID stays
//! 7 bits wide and receives the rewritten value modulo 128.
//!
//! Owns: that byte layout and the key-frame bit of the VP8 payload header (RFC 7741 §4.3).
//! May not touch: RTP headers (the caller hands in the RTP payload), numbering state.

/// Why a VP8 payload descriptor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Vp8Error {
    /// The RTP payload is empty: no descriptor at all.
    #[error("empty VP8 payload")]
    Empty,
    /// The descriptor announces more optional bytes than the payload holds.
    #[error("VP8 payload descriptor truncated: {need} bytes needed, {have} available")]
    Truncated { need: usize, have: usize },
}

/// Mask of a 15-bit picture ID.
pub const PICTURE_ID_MASK: u16 = 0x7FFF;

/// Longest descriptor (RFC 7741 §4.2): the required byte, X, a two-byte picture ID,
/// TL0PICIDX and TID/Y/KEYIDX. A parse of a payload's first `MAX_LEN` bytes finds the same
/// rewritable fields as a parse of the whole payload, and [`Vp8Descriptor::rewrite`] writes
/// nothing beyond them.
pub const MAX_LEN: usize = 6;

/// A validated VP8 payload descriptor, with the offsets of its rewritable fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Descriptor {
    /// N: the frame is not used as a reference by any other frame.
    pub non_reference: bool,
    /// S: the packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: the partition index.
    pub partition_index: u8,
    /// The picture ID and whether it is 15 bits wide (M set).
    pub picture_id: Option<(u16, bool)>,
    /// Temporal-layer-zero picture index.
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer ID (T set).
    pub temporal_id: Option<u8>,
    /// Y: layer sync; the frame depends only on base-layer frames.
    pub layer_sync: bool,
    /// Temporal key-frame index (K set).
    pub key_idx: Option<u8>,
    /// Descriptor length in bytes; the VP8 payload header follows it.
    pub len: usize,
    /// Whether this packet starts a key frame (S set, PID 0, payload header P bit clear).
    pub keyframe: bool,
    picture_id_at: Option<usize>,
    tl0_at: Option<usize>,
    tk_at: Option<usize>,
}

impl Vp8Descriptor {
    /// Read the descriptor at the start of an RTP payload.
    pub fn parse(payload: &[u8]) -> Result<Self, Vp8Error> {
        let first = *payload.first().ok_or(Vp8Error::Empty)?;
        let truncated = |need: usize| Vp8Error::Truncated {
            need,
            have: payload.len(),
        };
        let mut d = Vp8Descriptor {
            non_reference: first & 0x20 != 0,
            start_of_partition: first & 0x10 != 0,
            partition_index: first & 0x0F,
            picture_id: None,
            tl0_pic_idx: None,
            temporal_id: None,
            layer_sync: false,
            key_idx: None,
            len: 1,
            keyframe: false,
            picture_id_at: None,
            tl0_at: None,
            tk_at: None,
        };
        if first & 0x80 != 0 {
            let x = *payload.get(1).ok_or_else(|| truncated(2))?;
            let mut at = 2;
            if x & 0x80 != 0 {
                let b = *payload.get(at).ok_or_else(|| truncated(at + 1))?;
                if b & 0x80 != 0 {
                    let lo = *payload.get(at + 1).ok_or_else(|| truncated(at + 2))?;
                    d.picture_id = Some((u16::from_be_bytes([b & 0x7F, lo]), true));
                    d.picture_id_at = Some(at);
                    at += 2;
                } else {
                    d.picture_id = Some((u16::from(b), false));
                    d.picture_id_at = Some(at);
                    at += 1;
                }
            }
            if x & 0x40 != 0 {
                let b = *payload.get(at).ok_or_else(|| truncated(at + 1))?;
                d.tl0_pic_idx = Some(b);
                d.tl0_at = Some(at);
                at += 1;
            }
            if x & 0x30 != 0 {
                let b = *payload.get(at).ok_or_else(|| truncated(at + 1))?;
                if x & 0x20 != 0 {
                    d.temporal_id = Some(b >> 6);
                    d.layer_sync = b & 0x20 != 0;
                }
                if x & 0x10 != 0 {
                    d.key_idx = Some(b & 0x1F);
                }
                d.tk_at = Some(at);
                at += 1;
            }
            d.len = at;
        }
        d.keyframe = d.start_of_partition
            && d.partition_index == 0
            && payload.get(d.len).is_some_and(|h| h & 0x01 == 0);
        Ok(d)
    }

    /// Write new picture ID, TL0PICIDX and key index into `payload` (the same bytes this
    /// descriptor was parsed from). A field the descriptor does not carry is left absent; a
    /// 7-bit picture ID receives the value modulo 128. Returns `false`, writing nothing, when
    /// `payload` is shorter than the descriptor.
    pub fn rewrite(
        &self,
        payload: &mut [u8],
        picture_id: u16,
        tl0_pic_idx: u8,
        key_idx: u8,
    ) -> bool {
        if payload.len() < self.len {
            return false;
        }
        if let (Some(at), Some((_, long))) = (self.picture_id_at, self.picture_id) {
            if long {
                let v = (picture_id & PICTURE_ID_MASK) | 0x8000;
                payload[at..at + 2].copy_from_slice(&v.to_be_bytes());
            } else {
                payload[at] = (picture_id & 0x7F) as u8;
            }
        }
        if let Some(at) = self.tl0_at {
            payload[at] = tl0_pic_idx;
        }
        if let (Some(at), Some(_)) = (self.tk_at, self.key_idx) {
            payload[at] = (payload[at] & 0xE0) | (key_idx & 0x1F);
        }
        true
    }
}

/// Forward distance from `from` to `to` in 15-bit picture-ID space (0..32768).
#[inline]
pub fn picture_id_delta(from: u16, to: u16) -> u16 {
    to.wrapping_sub(from) & PICTURE_ID_MASK
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A descriptor as Chromium writes it: X, I with M, L, T (and optionally K), then a VP8
    /// payload header byte.
    fn chromium(pid: u16, tl0: u8, tid: u8, sync: bool, key: bool) -> Vec<u8> {
        let pid = pid | 0x8000;
        vec![
            0x90,
            0xE0,
            (pid >> 8) as u8,
            pid as u8,
            tl0,
            (tid << 6) | if sync { 0x20 } else { 0 },
            if key { 0x10 } else { 0x11 },
            0xAA,
        ]
    }

    #[test]
    fn minimal_descriptor() {
        let d = Vp8Descriptor::parse(&[0x10, 0x00, 0x9D]).unwrap();
        assert_eq!(d.len, 1);
        assert!(d.start_of_partition && d.keyframe);
        assert_eq!(d.picture_id, None);
        assert_eq!(d.tl0_pic_idx, None);
        assert_eq!(d.temporal_id, None);
        // P bit set: an inter frame.
        assert!(!Vp8Descriptor::parse(&[0x10, 0x01]).unwrap().keyframe);
        // Not a partition start: never a key frame, whatever the next byte says.
        assert!(!Vp8Descriptor::parse(&[0x00, 0x00]).unwrap().keyframe);
        // A descriptor with nothing after it is no key frame either.
        assert!(!Vp8Descriptor::parse(&[0x10]).unwrap().keyframe);
    }

    #[test]
    fn chromium_fields() {
        let b = chromium(0x1234, 200, 2, true, true);
        let d = Vp8Descriptor::parse(&b).unwrap();
        assert_eq!(d.len, 6);
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0_pic_idx, Some(200));
        assert_eq!(d.temporal_id, Some(2));
        assert!(d.layer_sync);
        assert_eq!(d.key_idx, None);
        assert!(d.keyframe);
        assert!(!d.non_reference);
        let b = chromium(5, 1, 0, false, false);
        let d = Vp8Descriptor::parse(&b).unwrap();
        assert!(!d.keyframe);
        assert!(!d.layer_sync);
    }

    #[test]
    fn short_picture_id_and_key_index() {
        // X, I (7-bit), K only: key index 17, N set.
        let b = [0xB0, 0x90, 0x05, 0x11, 0x00];
        let d = Vp8Descriptor::parse(&b).unwrap();
        assert!(d.non_reference);
        assert_eq!(d.picture_id, Some((5, false)));
        assert_eq!(d.temporal_id, None);
        assert_eq!(d.key_idx, Some(17));
        assert_eq!(d.len, 4);
        let mut w = b;
        assert!(d.rewrite(&mut w, 0x1FF, 9, 3));
        // 7 bits of 0x1FF, M stays clear; key index replaced, the rest of the byte kept.
        assert_eq!(w, [0xB0, 0x90, 0x7F, 0x03, 0x00]);
    }

    #[test]
    fn truncated_descriptors_are_typed_errors() {
        assert_eq!(Vp8Descriptor::parse(&[]), Err(Vp8Error::Empty));
        assert_eq!(
            Vp8Descriptor::parse(&[0x90]),
            Err(Vp8Error::Truncated { need: 2, have: 1 })
        );
        assert_eq!(
            Vp8Descriptor::parse(&[0x90, 0x80, 0x81]),
            Err(Vp8Error::Truncated { need: 4, have: 3 })
        );
        assert_eq!(
            Vp8Descriptor::parse(&[0x90, 0xC0, 0x01]),
            Err(Vp8Error::Truncated { need: 4, have: 3 })
        );
        assert_eq!(
            Vp8Descriptor::parse(&[0x90, 0x20]),
            Err(Vp8Error::Truncated { need: 3, have: 2 })
        );
    }

    #[test]
    fn rewrite_keeps_tid_sync_and_wraps_picture_id() {
        let mut b = chromium(0x7FFF, 255, 1, true, false);
        let d = Vp8Descriptor::parse(&b).unwrap();
        // 0x8000 is past the 15-bit space: it wraps to 0.
        assert!(d.rewrite(&mut b, 0x8000, 0, 31));
        let e = Vp8Descriptor::parse(&b).unwrap();
        assert_eq!(e.picture_id, Some((0, true)));
        assert_eq!(e.tl0_pic_idx, Some(0));
        assert_eq!(e.temporal_id, Some(1));
        assert!(e.layer_sync);
        assert_eq!(e.key_idx, None);
        assert_eq!(&b[6..], &[0x11, 0xAA]);
        assert!(!d.rewrite(&mut b[..3], 1, 1, 1));
    }

    #[test]
    fn picture_id_distance_wraps() {
        assert_eq!(picture_id_delta(0x7FFE, 1), 3);
        assert_eq!(picture_id_delta(10, 10), 0);
        assert_eq!(picture_id_delta(1, 0), 0x7FFF);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// Any bytes parse or fail with a typed error; a parsed descriptor rewrites without
        /// changing its length or the bytes after it, and reads back what was written.
        #[test]
        fn arbitrary_bytes_rewrite_round_trip(
            bytes in proptest::collection::vec(any::<u8>(), 0..16),
            pid in any::<u16>(), tl0 in any::<u8>(), key in any::<u8>(),
        ) {
            if let Ok(d) = Vp8Descriptor::parse(&bytes) {
                prop_assert!(d.len <= bytes.len());
                let mut w = bytes.clone();
                prop_assert!(d.rewrite(&mut w, pid, tl0, key));
                prop_assert_eq!(&w[d.len..], &bytes[d.len..]);
                let e = Vp8Descriptor::parse(&w).unwrap();
                prop_assert_eq!(e.len, d.len);
                prop_assert_eq!(e.temporal_id, d.temporal_id);
                prop_assert_eq!(e.layer_sync, d.layer_sync);
                prop_assert_eq!(e.keyframe, d.keyframe);
                match d.picture_id {
                    Some((_, true)) => prop_assert_eq!(e.picture_id, Some((pid & 0x7FFF, true))),
                    Some((_, false)) => prop_assert_eq!(e.picture_id, Some((pid & 0x7F, false))),
                    None => prop_assert_eq!(e.picture_id, None),
                }
                if d.tl0_pic_idx.is_some() { prop_assert_eq!(e.tl0_pic_idx, Some(tl0)); }
                if d.key_idx.is_some() { prop_assert_eq!(e.key_idx, Some(key & 0x1F)); }
            }
        }
    }
}
