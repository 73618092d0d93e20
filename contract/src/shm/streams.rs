//! Per-worker stream state: the SRTP packet index (rollover counter ‖ highest sequence number,
//! RFC 3711 §3.3.1) of every stream a relay worker handles, so that a restarted or upgraded
//! relay seeds its contexts instead of starting every stream at ROC 0 (docs/ENGINE.md
//! "Stream state across restarts").
//!
//! The region holds `workers × streams_per_worker` slots of 64 bytes. Worker `w` is the only
//! writer of its own `streams_per_worker` slots (like its counter block); any worker and any
//! new relay process read all of them. Every slot has its own sequence lock (`seqlock`).

use super::error::SlotError;
use super::layout::STREAM_WORDS;
use super::SessionId;

/// Which SRTP direction a stream-state entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum StreamDir {
    /// A stream the peer sends (the relay's inbound context of the session).
    In = 1,
    /// A stream the relay sends to the peer (the session's outbound context), keyed by the
    /// output SSRC.
    Out = 2,
    /// The SRTCP flow the relay sends to the peer (outbound context), keyed by the SSRC of
    /// the first packet of each compound (RFC 3711 §3.4): `index` is the SRTCP index, so a new
    /// process never uses one twice under the same key (§9.1).
    RtcpOut = 3,
}

/// One persisted stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRecord {
    pub session: SessionId,
    pub ssrc: u32,
    pub dir: StreamDir,
    /// The 48-bit SRTP packet index ROC ‖ SEQ (RFC 3711 §3.3.1) of the highest packet
    /// received (in) or sent (out) when the entry was last written. The writer refreshes it
    /// at every rollover and whenever the sequence number moved on by a fixed step, so the
    /// true highest index is at most that step ahead (docs/ENGINE.md).
    pub index: u64,
    /// Output streams numbered by the relay (SSRC-rewriting routes): the RTP timestamp of the
    /// packet at `index`, so a new process continues the numbering. 0 otherwise.
    pub ts: u32,
    /// The output stream is numbered by the relay (SSRC rewrite), not by the source.
    pub rewritten: bool,
}

impl StreamRecord {
    /// The rollover counter (RFC 3711 §3.3.1).
    pub fn roc(&self) -> u32 {
        (self.index >> 16) as u32
    }

    /// The sequence number part of the index.
    pub fn seq(&self) -> u16 {
        self.index as u16
    }
}

/// Word 0 session id (0 = free) · word 1 ssrc | dir << 32 | rewritten << 40 · word 2 index
/// (48 bits) · word 3 ts · words 4–6 reserved (0).
pub(crate) fn encode_stream(r: &StreamRecord) -> [u64; STREAM_WORDS] {
    let mut w = [0u64; STREAM_WORDS];
    w[0] = r.session;
    w[1] = u64::from(r.ssrc) | (u64::from(r.dir as u8) << 32) | (u64::from(r.rewritten) << 40);
    w[2] = r.index & 0xffff_ffff_ffff;
    w[3] = u64::from(r.ts);
    w
}

pub(crate) fn decode_stream(w: &[u64; STREAM_WORDS]) -> Result<StreamRecord, SlotError> {
    let dir = match (w[1] >> 32) as u8 {
        1 => StreamDir::In,
        2 => StreamDir::Out,
        3 => StreamDir::RtcpOut,
        d => return Err(SlotError::BadDirection(d)),
    };
    let rewritten = match (w[1] >> 40) as u8 {
        0 => false,
        1 => true,
        f => return Err(SlotError::BadFlag(f)),
    };
    Ok(StreamRecord {
        session: w[0],
        ssrc: w[1] as u32,
        dir,
        index: w[2] & 0xffff_ffff_ffff,
        ts: w[3] as u32,
        rewritten,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = StreamRecord {
            session: 42,
            ssrc: 0xdead_beef,
            dir: StreamDir::Out,
            index: (7 << 16) | 65_000,
            ts: 0x1234_5678,
            rewritten: true,
        };
        let w = encode_stream(&r);
        assert_eq!(decode_stream(&w).unwrap(), r);
        assert_eq!(r.roc(), 7);
        assert_eq!(r.seq(), 65_000);
        let mut bad = w;
        bad[1] = u64::from(r.ssrc) | (4 << 32);
        assert_eq!(decode_stream(&bad), Err(SlotError::BadDirection(4)));
        let rtcp = StreamRecord {
            dir: StreamDir::RtcpOut,
            index: (1 << 31) - 1,
            ..r
        };
        assert_eq!(decode_stream(&encode_stream(&rtcp)).unwrap(), rtcp);
    }

    #[test]
    fn regions_are_per_worker_and_scanned_up_to_their_high_water_mark() {
        use crate::shm::{Capacity, ShmReader, ShmWriter};
        let path = std::env::temp_dir().join(format!("sluice-streams-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cap = Capacity {
            sessions: 4,
            routes: 4,
            workers: 3,
        };
        let w = ShmWriter::create_with_streams(&path, cap, 8).unwrap();
        assert_eq!(w.streams_per_worker(), 8);
        let r = ShmReader::open(&path).unwrap();
        assert_eq!(r.streams_per_worker(), 8);
        let rec = |session, index| StreamRecord {
            session,
            ssrc: 9,
            dir: StreamDir::In,
            index,
            ts: 0,
            rewritten: false,
        };
        assert!(r.put_stream(1, 5, &rec(7, 1 << 16)));
        assert!(r.put_stream(2, 0, &rec(8, 3)));
        assert!(!r.put_stream(1, 8, &rec(7, 0)), "past the region");
        assert!(!r.put_stream(3, 0, &rec(7, 0)), "past the workers");
        assert_eq!(
            (
                r.stream_high_water(0),
                r.stream_high_water(1),
                r.stream_high_water(2)
            ),
            (0, 6, 1)
        );
        let mut seen = Vec::new();
        let rep = r.for_each_stream(|wk, i, s| seen.push((wk, i, s.session, s.roc())));
        assert_eq!(seen, [(1, 5, 7, 1), (2, 0, 8, 0)]);
        assert_eq!(rep.records, 2);
        assert!(r.clear_stream(1, 5));
        assert_eq!(r.stream_slot(1, 5).unwrap(), None);
        assert_eq!(r.stream_slot(2, 0).unwrap(), Some(rec(8, 3)));
        // Another process sees the same entries.
        let r2 = ShmReader::open(&path).unwrap();
        assert_eq!(r2.stream_slot(2, 0).unwrap(), Some(rec(8, 3)));
        drop(w);
        let _ = std::fs::remove_file(&path);
    }
}
