//! Per-worker session statistics: what each relay worker counted for the sessions it handled
//! (packets and bytes in and out, authentication failures, replays, last packet times) and
//! for each of their streams (packets and bytes per SSRC; for received streams the RFC 3550
//! reception statistics: extended highest sequence number, expected, lost, fraction lost,
//! interarrival jitter). Read by control for the admin API and sluicectl (docs/API.md
//! "Session diagnostics").
//!
//! The region holds `workers × stats_per_worker` slots of 128 bytes. Worker `w` is the only
//! writer of its own slots (like its counter block and stream-state slots) and rewrites them
//! at most every ~100 ms, never per packet; every slot has its own sequence lock. A session a
//! worker handled has one session record and one stream record per stream in that worker's
//! region; readers sum a session's records over the workers.

use super::error::SlotError;
use super::layout::STAT_WORDS;
use super::{SessionId, StreamDir};
use std::collections::BTreeMap;

const KIND_SESSION: u8 = 1;
const KIND_STREAM: u8 = 2;

/// One worker's counters of one session, since that relay process started handling it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionStats {
    pub session: SessionId,
    /// Media datagrams received from the session's peer (RTP, RTCP or undecodable, accepted
    /// or not; STUN and DTLS go to control and are not counted).
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Datagrams the relay queued towards the peer (media and RTCP it forwarded or made).
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets from the peer that failed SRTP/SRTCP authentication (RFC 3711 §3.3 step 7).
    pub auth_failures: u64,
    /// Packets from the peer refused by the replay check (replayed or too old, §3.3.2).
    pub replays: u64,
    /// Wall-clock time of the last datagram from / to the peer; 0 = none.
    pub last_in_unix_ms: u64,
    pub last_out_unix_ms: u64,
    /// When the worker wrote this record.
    pub published_unix_ms: u64,
    /// The relay process that wrote it.
    pub writer_pid: u32,
    /// The downlink bandwidth estimate (bit/s) of the worker that sends to the session as a
    /// subscriber and numbers its packets with the transport-wide sequence extension
    /// (docs/ENGINE.md "Bandwidth estimation"); 0 = none. Word 10, appended within ABI 7: an
    /// older relay leaves it 0.
    pub downlink_bps: u64,
}

impl SessionStats {
    /// Add another worker's record of the same session.
    pub fn merge(&mut self, o: &SessionStats) {
        self.packets_in = self.packets_in.wrapping_add(o.packets_in);
        self.bytes_in = self.bytes_in.wrapping_add(o.bytes_in);
        self.packets_out = self.packets_out.wrapping_add(o.packets_out);
        self.bytes_out = self.bytes_out.wrapping_add(o.bytes_out);
        self.auth_failures = self.auth_failures.wrapping_add(o.auth_failures);
        self.replays = self.replays.wrapping_add(o.replays);
        self.last_in_unix_ms = self.last_in_unix_ms.max(o.last_in_unix_ms);
        self.last_out_unix_ms = self.last_out_unix_ms.max(o.last_out_unix_ms);
        self.published_unix_ms = self.published_unix_ms.max(o.published_unix_ms);
        // Only the worker whose numbering the subscriber's feedback reaches estimates.
        self.downlink_bps = self.downlink_bps.max(o.downlink_bps);
    }
}

/// The simulcast layer state of one output stream (docs/ENGINE.md "Simulcast").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    /// The layer being forwarded (0 = lowest); `None` before the first.
    pub current: Option<u8>,
    /// The layer the selector is heading for.
    pub target: u8,
    /// Layers of the source.
    pub count: u8,
    /// Layer switches made on this output.
    pub switches: u32,
    /// Switch latency of the last switch and the longest one since the relay process began
    /// handling the output, in milliseconds: from the moment the selector first wanted
    /// another layer (and asked for its key frame) to the first packet of that layer
    /// forwarded. 0 before a switch. Stream word 12, appended within ABI 7: an older relay
    /// leaves it 0.
    pub switch_ms_last: u32,
    pub switch_ms_max: u32,
}

/// RFC 3550 Appendix A reception statistics of one received stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceptionStats {
    /// Extended highest sequence number received (cycles ‖ max_seq, A.3).
    pub extended_highest: u32,
    /// Packets expected since the stream was validated (A.3).
    pub expected: u32,
    /// Packets counted by the sequence bookkeeping (duplicates included, A.1).
    pub received: u32,
    /// Cumulative packets lost (A.3; negative with duplicates).
    pub cumulative_lost: i64,
    /// Fraction lost over the last interval of about one second, in 1/256 (A.3).
    pub fraction_lost: u8,
    /// Interarrival jitter in RTP timestamp units (A.8); 0 until the clock rate is known.
    pub jitter_rtp: u32,
    /// The stream's RTP clock rate, inferred from its timestamps against arrival times and
    /// snapped to a standard rate; 0 while unknown.
    pub clock_rate: u32,
    /// The jitter in microseconds (`jitter_rtp` at `clock_rate`); 0 while unknown.
    pub jitter_us: u32,
}

/// One worker's counters of one stream of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub session: SessionId,
    pub ssrc: u32,
    /// [`StreamDir::In`]: the peer sends it (by its SSRC); [`StreamDir::Out`]: the relay sends
    /// it to the peer (by the output SSRC).
    #[serde(serialize_with = "dir_name")]
    pub dir: StreamDir,
    /// RTP packets (in: authenticated; out: queued) and their bytes (plain RTP length in,
    /// protected length out).
    pub packets: u64,
    pub bytes: u64,
    pub last_unix_ms: u64,
    pub published_unix_ms: u64,
    pub writer_pid: u32,
    /// Received streams only.
    pub reception: Option<ReceptionStats>,
    /// Output streams fed by a simulcast source only. Word 11, appended within ABI 7: an
    /// older relay leaves it 0 (none).
    pub layer: Option<LayerStats>,
}

fn dir_name<S: serde::Serializer>(d: &StreamDir, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match d {
        StreamDir::In => "in",
        StreamDir::Out => "out",
        StreamDir::RtcpOut => "rtcp_out",
    })
}

/// One session-stats slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatRecord {
    Session(SessionStats),
    Stream(StreamStats),
}

impl StatRecord {
    pub fn session(&self) -> SessionId {
        match self {
            StatRecord::Session(s) => s.session,
            StatRecord::Stream(s) => s.session,
        }
    }

    pub fn writer_pid(&self) -> u32 {
        match self {
            StatRecord::Session(s) => s.writer_pid,
            StatRecord::Stream(s) => s.writer_pid,
        }
    }
}

/// Word 0 session id (0 = free) · word 1 kind | dir << 8 | ssrc << 32 · words 2–12 by kind ·
/// word 13 published unix ms · word 14 writer pid. Session: 2 packets in · 3 bytes in ·
/// 4 packets out · 5 bytes out · 6 auth failures · 7 replays · 8 last in ms · 9 last out ms.
/// Stream: 2 packets · 3 bytes · 4 last ms · 5 flags (bit 0: reception present) ·
/// 6 extended highest | jitter (RTP units) << 32 · 7 expected | received << 32 ·
/// 8 cumulative lost (i64) · 9 fraction lost | clock rate << 32 · 10 jitter µs ·
/// 11 layer: 0 none, else 1 | (current + 1, 0 none) << 8 | target << 16 | count << 24 |
/// switches << 32 · 12 switch latency ms: last | longest << 32. Session word 10: downlink
/// estimate bit/s (0 none). Words 10–12 were zero before; a reader of an older relay's
/// records sees no estimate, no layer and no switch latency.
pub(crate) fn encode_stat(r: &StatRecord) -> [u64; STAT_WORDS] {
    let mut w = [0u64; STAT_WORDS];
    match r {
        StatRecord::Session(s) => {
            w[0] = s.session;
            w[1] = u64::from(KIND_SESSION);
            w[2] = s.packets_in;
            w[3] = s.bytes_in;
            w[4] = s.packets_out;
            w[5] = s.bytes_out;
            w[6] = s.auth_failures;
            w[7] = s.replays;
            w[8] = s.last_in_unix_ms;
            w[9] = s.last_out_unix_ms;
            w[10] = s.downlink_bps;
            w[13] = s.published_unix_ms;
            w[14] = u64::from(s.writer_pid);
        }
        StatRecord::Stream(s) => {
            w[0] = s.session;
            w[1] =
                u64::from(KIND_STREAM) | (u64::from(s.dir as u8) << 8) | (u64::from(s.ssrc) << 32);
            w[2] = s.packets;
            w[3] = s.bytes;
            w[4] = s.last_unix_ms;
            if let Some(rc) = &s.reception {
                w[5] = 1;
                w[6] = u64::from(rc.extended_highest) | (u64::from(rc.jitter_rtp) << 32);
                w[7] = u64::from(rc.expected) | (u64::from(rc.received) << 32);
                w[8] = rc.cumulative_lost as u64;
                w[9] = u64::from(rc.fraction_lost) | (u64::from(rc.clock_rate) << 32);
                w[10] = u64::from(rc.jitter_us);
            }
            if let Some(l) = &s.layer {
                w[11] = 1
                    | (l.current.map_or(0, |c| u64::from(c) + 1) << 8)
                    | (u64::from(l.target) << 16)
                    | (u64::from(l.count) << 24)
                    | (u64::from(l.switches) << 32);
                w[12] = u64::from(l.switch_ms_last) | (u64::from(l.switch_ms_max) << 32);
            }
            w[13] = s.published_unix_ms;
            w[14] = u64::from(s.writer_pid);
        }
    }
    w
}

pub(crate) fn decode_stat(w: &[u64; STAT_WORDS]) -> Result<StatRecord, SlotError> {
    let writer_pid = w[14] as u32;
    match w[1] as u8 {
        KIND_SESSION => Ok(StatRecord::Session(SessionStats {
            session: w[0],
            packets_in: w[2],
            bytes_in: w[3],
            packets_out: w[4],
            bytes_out: w[5],
            auth_failures: w[6],
            replays: w[7],
            last_in_unix_ms: w[8],
            last_out_unix_ms: w[9],
            published_unix_ms: w[13],
            writer_pid,
            downlink_bps: w[10],
        })),
        KIND_STREAM => {
            let dir = match (w[1] >> 8) as u8 {
                1 => StreamDir::In,
                2 => StreamDir::Out,
                d => return Err(SlotError::BadDirection(d)),
            };
            let reception = match w[5] {
                0 => None,
                1 => Some(ReceptionStats {
                    extended_highest: w[6] as u32,
                    jitter_rtp: (w[6] >> 32) as u32,
                    expected: w[7] as u32,
                    received: (w[7] >> 32) as u32,
                    cumulative_lost: w[8] as i64,
                    fraction_lost: w[9] as u8,
                    clock_rate: (w[9] >> 32) as u32,
                    jitter_us: w[10] as u32,
                }),
                f => return Err(SlotError::BadFlag(f as u8)),
            };
            let layer = match w[11] & 0xFF {
                0 => None,
                1 => Some(LayerStats {
                    current: ((w[11] >> 8) as u8).checked_sub(1),
                    target: (w[11] >> 16) as u8,
                    count: (w[11] >> 24) as u8,
                    switches: (w[11] >> 32) as u32,
                    switch_ms_last: w[12] as u32,
                    switch_ms_max: (w[12] >> 32) as u32,
                }),
                f => return Err(SlotError::BadFlag(f as u8)),
            };
            Ok(StatRecord::Stream(StreamStats {
                session: w[0],
                ssrc: (w[1] >> 32) as u32,
                dir,
                packets: w[2],
                bytes: w[3],
                last_unix_ms: w[4],
                published_unix_ms: w[13],
                writer_pid,
                reception,
                layer,
            }))
        }
        k => Err(SlotError::BadStatKind(k)),
    }
}

/// One session's statistics summed over the relay workers that handled it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionDiagnostics {
    /// Counters summed over the workers (`session` set, `writer_pid` of the newest record).
    pub totals: SessionStats,
    /// The workers that hold a record of this session.
    pub workers: Vec<u32>,
    /// Its streams, sorted by direction then SSRC; one entry per stream, packets and bytes
    /// summed over workers, the reception statistics of the worker that received it last.
    pub streams: Vec<StreamStats>,
}

/// Every session's diagnostics as the relay last published them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub sessions: BTreeMap<SessionId, SessionDiagnostics>,
    /// Records of another relay process than the one the relay-info block names (left behind
    /// by a previous process, see docs/SHM.md), not counted.
    pub stale: u32,
}

impl Diagnostics {
    /// Fold one worker's record in. Records whose writer is not `relay_pid` (when non-zero)
    /// are counted as stale and ignored.
    pub(crate) fn add(&mut self, worker: u32, r: &StatRecord, relay_pid: u32) {
        if relay_pid != 0 && r.writer_pid() != relay_pid {
            self.stale += 1;
            return;
        }
        let d = self.sessions.entry(r.session()).or_default();
        d.totals.session = r.session();
        if !d.workers.contains(&worker) {
            d.workers.push(worker);
            d.workers.sort_unstable();
        }
        match r {
            StatRecord::Session(s) => {
                d.totals.writer_pid = d.totals.writer_pid.max(s.writer_pid);
                d.totals.merge(s);
            }
            StatRecord::Stream(s) => {
                let key = (s.dir, s.ssrc);
                match d.streams.iter_mut().find(|e| (e.dir, e.ssrc) == key) {
                    Some(e) => {
                        e.packets = e.packets.wrapping_add(s.packets);
                        e.bytes = e.bytes.wrapping_add(s.bytes);
                        if s.last_unix_ms > e.last_unix_ms {
                            e.last_unix_ms = s.last_unix_ms;
                            if s.reception.is_some() {
                                e.reception = s.reception;
                            }
                            if s.layer.is_some() {
                                e.layer = s.layer;
                            }
                        }
                        e.published_unix_ms = e.published_unix_ms.max(s.published_unix_ms);
                    }
                    None => {
                        d.streams.push(*s);
                        d.streams.sort_unstable_by_key(|e| (e.dir, e.ssrc));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: SessionId, pin: u64) -> StatRecord {
        StatRecord::Session(SessionStats {
            session: id,
            packets_in: pin,
            bytes_in: pin * 100,
            packets_out: 3,
            bytes_out: 300,
            auth_failures: 2,
            replays: 1,
            last_in_unix_ms: 1_000 + pin,
            last_out_unix_ms: 2_000,
            published_unix_ms: 3_000,
            writer_pid: 77,
            downlink_bps: 1_234_567,
        })
    }

    fn stream(id: SessionId, last: u64, lost: i64) -> StatRecord {
        StatRecord::Stream(StreamStats {
            session: id,
            ssrc: 0xdead_beef,
            dir: StreamDir::In,
            packets: 10,
            bytes: 1_000,
            last_unix_ms: last,
            published_unix_ms: last,
            writer_pid: 77,
            reception: Some(ReceptionStats {
                extended_highest: 65_545,
                expected: 15,
                received: 13,
                cumulative_lost: lost,
                fraction_lost: 34,
                jitter_rtp: 480,
                clock_rate: 48_000,
                jitter_us: 10_000,
            }),
            layer: None,
        })
    }

    #[test]
    fn round_trip() {
        for r in [session(5, 9), stream(5, 4, -2)] {
            assert_eq!(decode_stat(&encode_stat(&r)).unwrap(), r);
        }
        let out = StatRecord::Stream(StreamStats {
            dir: StreamDir::Out,
            reception: None,
            layer: Some(LayerStats {
                current: Some(2),
                target: 0,
                count: 3,
                switches: 70_000,
                switch_ms_last: 120,
                switch_ms_max: 4_000_000,
            }),
            ..match stream(5, 4, 0) {
                StatRecord::Stream(s) => s,
                StatRecord::Session(_) => unreachable!("built as a stream"),
            }
        });
        assert_eq!(decode_stat(&encode_stat(&out)).unwrap(), out);
        let mut first = match out {
            StatRecord::Stream(s) => s,
            StatRecord::Session(_) => unreachable!("built as a stream"),
        };
        first.layer = Some(LayerStats {
            current: None,
            ..first.layer.unwrap_or_default()
        });
        let first = StatRecord::Stream(first);
        assert_eq!(decode_stat(&encode_stat(&first)).unwrap(), first);
        let mut bad = encode_stat(&out);
        bad[1] = 9;
        assert_eq!(decode_stat(&bad), Err(SlotError::BadStatKind(9)));
        bad[1] = u64::from(KIND_STREAM) | (3 << 8);
        assert_eq!(decode_stat(&bad), Err(SlotError::BadDirection(3)));
    }

    #[test]
    fn diagnostics_sum_workers_and_skip_other_processes() {
        let mut d = Diagnostics::default();
        d.add(0, &session(5, 9), 77);
        d.add(1, &session(5, 1), 77);
        d.add(1, &stream(5, 10, 2), 77);
        d.add(0, &stream(5, 20, 3), 77);
        d.add(0, &session(6, 1), 78);
        assert_eq!(d.stale, 1);
        let s = &d.sessions[&5];
        assert_eq!(s.workers, [0, 1]);
        assert_eq!((s.totals.packets_in, s.totals.auth_failures), (10, 4));
        assert_eq!(s.totals.last_in_unix_ms, 1_009);
        assert_eq!(s.streams.len(), 1);
        assert_eq!(s.streams[0].packets, 20);
        assert_eq!(
            s.streams[0].reception.unwrap().cumulative_lost,
            3,
            "newest wins"
        );
    }

    #[test]
    fn regions_are_per_worker_and_read_back_by_other_processes() {
        use crate::shm::{Capacity, ShmReader, ShmWriter};
        let path = std::env::temp_dir().join(format!("sluice-stats-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cap = Capacity {
            sessions: 4,
            routes: 4,
            workers: 2,
        };
        let w = ShmWriter::create(&path, cap).unwrap();
        let r = ShmReader::open(&path).unwrap();
        assert_eq!(r.stats_per_worker(), crate::shm::DEFAULT_STATS_PER_WORKER);
        assert!(r.put_stat(0, 3, &session(5, 9)));
        assert!(r.put_stat(1, 0, &session(5, 1)));
        assert!(r.put_stat(1, 1, &stream(5, 10, 2)));
        assert!(!r.put_stat(2, 0, &session(5, 1)), "past the workers");
        assert_eq!((r.stat_high_water(0), r.stat_high_water(1)), (4, 2));
        let r2 = ShmReader::open(&path).unwrap();
        assert_eq!(r2.stat_slot(0, 3).unwrap(), Some(session(5, 9)));
        // No relay info written: every record counts.
        let (d, rep) = r2.diagnostics();
        assert_eq!(rep.records, 3);
        assert_eq!(d.sessions[&5].totals.packets_in, 10);
        assert_eq!(d.sessions[&5].streams.len(), 1);
        // Once a relay names itself, only its records count.
        r.set_relay_info(78, "mmsg", 2, 1);
        let (d, _) = r2.diagnostics();
        assert_eq!((d.sessions.len(), d.stale), (0, 3));
        assert!(r.clear_stat(0, 3));
        assert_eq!(r2.stat_slot(0, 3).unwrap(), None);
        drop(w);
        let _ = std::fs::remove_file(&path);
    }
}
