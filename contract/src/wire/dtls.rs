//! DTLS 1.0/1.2 record layer (RFC 6347 §4.1) and handshake message headers (RFC 6347 §4.2.2).
//!
//! Owns: iteration over the records of one datagram and over the handshake fragments of a
//! plaintext (epoch 0) handshake record, enough for control to recognise a ClientHello even
//! when it is fragmented across datagrams (Chromium sends it in two). May not touch: any
//! cryptography; reassembly of fragments (the caller keeps the state across datagrams).
//!
//! ```text
//! record:    type(1) version(2) epoch(2) sequence_number(6) length(2) fragment(length)
//! handshake: msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3) body
//! ```

use super::{be16, be24};

/// Length of a DTLS 1.0/1.2 record header.
pub const RECORD_HEADER_LEN: usize = 13;
/// Length of a DTLS handshake message header.
pub const HANDSHAKE_HEADER_LEN: usize = 12;

/// Why bytes are not a valid DTLS record or handshake header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    /// Fewer bytes than a record (or handshake) header.
    #[error("DTLS header truncated")]
    TooShort,
    /// The record's length field runs past the datagram.
    #[error("DTLS record length overruns the datagram")]
    RecordOverrun,
    /// The version's major byte is not 0xFE (DTLS 1.0 = 0xFEFF, DTLS 1.2 = 0xFEFD).
    #[error("DTLS record version {0:#06x} not a DTLS 1.x version")]
    BadVersion(u16),
    /// The first byte is a DTLS 1.3 unified header (RFC 9147 §4), which this parser does not read.
    #[error("DTLS 1.3 unified header not supported")]
    UnifiedHeader,
    /// The handshake fragment's offset and length do not fit the message length, or the
    /// fragment body runs past the record.
    #[error("DTLS handshake fragment inconsistent")]
    BadFragment,
}

/// Record content types (RFC 6347 §4.1, TLS registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// 20
    ChangeCipherSpec,
    /// 21
    Alert,
    /// 22
    Handshake,
    /// 23
    ApplicationData,
    /// Any other value (24 heartbeat, 25 tls12_cid, ...).
    Other(u8),
}

impl From<u8> for ContentType {
    fn from(v: u8) -> Self {
        match v {
            20 => ContentType::ChangeCipherSpec,
            21 => ContentType::Alert,
            22 => ContentType::Handshake,
            23 => ContentType::ApplicationData,
            o => ContentType::Other(o),
        }
    }
}

/// Handshake message types control cares about (RFC 5246 §7.4, RFC 6347 §4.3.2).
pub mod handshake_type {
    /// ClientHello.
    pub const CLIENT_HELLO: u8 = 1;
    /// ServerHello.
    pub const SERVER_HELLO: u8 = 2;
    /// HelloVerifyRequest (DTLS only).
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    /// Certificate.
    pub const CERTIFICATE: u8 = 11;
    /// ServerKeyExchange.
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    /// CertificateRequest.
    pub const CERTIFICATE_REQUEST: u8 = 13;
    /// ServerHelloDone.
    pub const SERVER_HELLO_DONE: u8 = 14;
    /// CertificateVerify.
    pub const CERTIFICATE_VERIFY: u8 = 15;
    /// ClientKeyExchange.
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    /// Finished.
    pub const FINISHED: u8 = 20;
}

/// One DTLS record: header fields and its fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Raw content type byte.
    pub content_type: u8,
    /// Protocol version (0xFEFF DTLS 1.0, 0xFEFD DTLS 1.2).
    pub version: u16,
    /// Epoch: 0 until ChangeCipherSpec, then incremented per cipher state change.
    pub epoch: u16,
    /// 48-bit record sequence number.
    pub sequence: u64,
    /// The record's fragment (`length` bytes).
    pub fragment: &'a [u8],
}

impl<'a> Record<'a> {
    /// Parses the record at the start of `buf`, returning it and the bytes after it.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), DtlsError> {
        let Some(&content_type) = buf.first() else {
            return Err(DtlsError::TooShort);
        };
        // RFC 9147 §4: top three bits 001 mark a DTLS 1.3 unified header, not DTLSPlaintext.
        if content_type & 0xE0 == 0x20 {
            return Err(DtlsError::UnifiedHeader);
        }
        if buf.len() < RECORD_HEADER_LEN {
            return Err(DtlsError::TooShort);
        }
        let version = be16(buf, 1).unwrap_or(0);
        if version >> 8 != 0xFE {
            return Err(DtlsError::BadVersion(version));
        }
        let epoch = be16(buf, 3).unwrap_or(0);
        let sequence = buf[5..11]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let len = usize::from(be16(buf, 11).unwrap_or(0));
        let end = RECORD_HEADER_LEN + len;
        let fragment = buf
            .get(RECORD_HEADER_LEN..end)
            .ok_or(DtlsError::RecordOverrun)?;
        let rest = buf.get(end..).unwrap_or(&[]);
        Ok((
            Record {
                content_type,
                version,
                epoch,
                sequence,
                fragment,
            },
            rest,
        ))
    }

    /// The content type as an enum.
    pub fn kind(&self) -> ContentType {
        ContentType::from(self.content_type)
    }

    /// Handshake fragments in this record. Meaningful only for a plaintext handshake record
    /// (content type 22, epoch 0); an encrypted one yields garbage or an error.
    pub fn handshakes(&self) -> Handshakes<'a> {
        Handshakes {
            rest: self.fragment,
        }
    }
}

/// Iterator over the records of one datagram; yields one error and then stops.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

/// Iterates the records in `datagram` (several records may share one datagram, RFC 6347 §4.1.1).
pub fn records(datagram: &[u8]) -> Records<'_> {
    Records { rest: datagram }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DtlsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match Record::parse(self.rest) {
            Ok((rec, rest)) => {
                self.rest = rest;
                Some(Ok(rec))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// One handshake message fragment (RFC 6347 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeFragment<'a> {
    /// HandshakeType.
    pub msg_type: u8,
    /// Length of the whole (reassembled) message body (24 bits).
    pub length: u32,
    /// Handshake message sequence number.
    pub message_seq: u16,
    /// Offset of this fragment within the message body (24 bits).
    pub fragment_offset: u32,
    /// Length of this fragment (24 bits).
    pub fragment_length: u32,
    /// The fragment's bytes (`fragment_length` of them).
    pub body: &'a [u8],
}

impl<'a> HandshakeFragment<'a> {
    /// Parses the handshake fragment at the start of `buf`, returning it and the bytes after it.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), DtlsError> {
        if buf.len() < HANDSHAKE_HEADER_LEN {
            return Err(DtlsError::TooShort);
        }
        let msg_type = buf[0];
        let length = be24(buf, 1).unwrap_or(0);
        let message_seq = be16(buf, 4).unwrap_or(0);
        let fragment_offset = be24(buf, 6).unwrap_or(0);
        let fragment_length = be24(buf, 9).unwrap_or(0);
        // 24-bit values: the sum cannot overflow a u32.
        if fragment_offset + fragment_length > length {
            return Err(DtlsError::BadFragment);
        }
        let end = HANDSHAKE_HEADER_LEN + fragment_length as usize;
        let body = buf
            .get(HANDSHAKE_HEADER_LEN..end)
            .ok_or(DtlsError::BadFragment)?;
        let rest = buf.get(end..).unwrap_or(&[]);
        Ok((
            HandshakeFragment {
                msg_type,
                length,
                message_seq,
                fragment_offset,
                fragment_length,
                body,
            },
            rest,
        ))
    }

    /// True for a ClientHello fragment (whole or partial).
    pub fn is_client_hello(&self) -> bool {
        self.msg_type == handshake_type::CLIENT_HELLO
    }

    /// True when this fragment is the whole message.
    pub fn is_complete(&self) -> bool {
        self.fragment_offset == 0 && self.fragment_length == self.length
    }
}

/// Iterator over the handshake fragments of a record; yields one error and then stops.
#[derive(Debug, Clone)]
pub struct Handshakes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Handshakes<'a> {
    type Item = Result<HandshakeFragment<'a>, DtlsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match HandshakeFragment::parse(self.rest) {
            Ok((hs, rest)) => {
                self.rest = rest;
                Some(Ok(hs))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// True when `datagram` starts with a plaintext handshake record holding a ClientHello
/// fragment (whole or the first piece of a fragmented one, or a later piece).
pub fn starts_client_hello(datagram: &[u8]) -> bool {
    match Record::parse(datagram) {
        Ok((rec, _)) if rec.kind() == ContentType::Handshake && rec.epoch == 0 => {
            matches!(rec.handshakes().next(), Some(Ok(hs)) if hs.is_client_hello())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(ct: u8, epoch: u16, seq: u64, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ct, 0xFE, 0xFD];
        v.extend_from_slice(&epoch.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes()[2..]);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn handshake(msg_type: u8, len: u32, seq: u16, off: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![msg_type];
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&off.to_be_bytes()[1..]);
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn fragmented_client_hello() {
        // A 300-byte ClientHello split 200 + 100 over two datagrams.
        let hello: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let d1 = record(22, 0, 0, &handshake(1, 300, 0, 0, &hello[..200]));
        let d2 = record(22, 0, 1, &handshake(1, 300, 0, 200, &hello[200..]));
        assert!(starts_client_hello(&d1));
        assert!(starts_client_hello(&d2));

        let recs: Vec<_> = records(&d1).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 1);
        let r = recs[0];
        assert_eq!(r.kind(), ContentType::Handshake);
        assert_eq!(r.version, 0xFEFD);
        assert_eq!(r.epoch, 0);
        assert_eq!(r.sequence, 0);
        let hs = r.handshakes().next().unwrap().unwrap();
        assert!(hs.is_client_hello());
        assert!(!hs.is_complete());
        assert_eq!(
            (
                hs.length,
                hs.message_seq,
                hs.fragment_offset,
                hs.fragment_length
            ),
            (300, 0, 0, 200)
        );
        assert_eq!(hs.body, &hello[..200]);

        let (r2, rest) = Record::parse(&d2).unwrap();
        assert!(rest.is_empty());
        assert_eq!(r2.sequence, 1);
        let hs2 = r2.handshakes().next().unwrap().unwrap();
        assert_eq!((hs2.fragment_offset, hs2.fragment_length), (200, 100));
        assert_eq!(hs2.body, &hello[200..]);
    }

    #[test]
    fn several_records_and_messages() {
        // Flight: ServerHello + ServerHelloDone in one record, then a CCS record, then an
        // encrypted (epoch 1) Finished, all in one datagram.
        let mut body = handshake(2, 4, 1, 0, &[1, 2, 3, 4]);
        body.extend(handshake(14, 0, 2, 0, &[]));
        let mut d = record(22, 0, 5, &body);
        d.extend(record(20, 0, 6, &[1]));
        d.extend(record(22, 1, 0x0000_BEEF_CAFE, &[9; 40]));
        let recs: Vec<_> = records(&d).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 3);
        let msgs: Vec<_> = recs[0].handshakes().collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert!(msgs.iter().all(|m| m.is_complete()));
        assert_eq!(msgs[1].msg_type, handshake_type::SERVER_HELLO_DONE);
        assert_eq!(recs[1].kind(), ContentType::ChangeCipherSpec);
        assert_eq!(recs[2].epoch, 1);
        assert_eq!(recs[2].sequence, 0xBEEF_CAFE);
        assert!(!starts_client_hello(&d));
    }

    #[test]
    fn rejects() {
        assert_eq!(Record::parse(&[]).unwrap_err(), DtlsError::TooShort);
        assert_eq!(Record::parse(&[22, 0xFE]).unwrap_err(), DtlsError::TooShort);
        let mut r = record(22, 0, 0, &[0; 4]);
        r.truncate(15);
        assert_eq!(Record::parse(&r).unwrap_err(), DtlsError::RecordOverrun);
        let mut r = record(22, 0, 0, &[]);
        r[1] = 0x03;
        assert_eq!(
            Record::parse(&r).unwrap_err(),
            DtlsError::BadVersion(0x03FD)
        );
        assert_eq!(
            Record::parse(&[0x2C, 0, 0, 0]).unwrap_err(),
            DtlsError::UnifiedHeader
        );
        // Offset + fragment length beyond the message length.
        let hs = handshake(1, 10, 0, 8, &[0; 4]);
        assert_eq!(
            HandshakeFragment::parse(&hs).unwrap_err(),
            DtlsError::BadFragment
        );
        // Fragment body beyond the record.
        let mut hs = handshake(1, 10, 0, 0, &[0; 4]);
        hs.truncate(14);
        assert_eq!(
            HandshakeFragment::parse(&hs).unwrap_err(),
            DtlsError::BadFragment
        );
        // An error ends iteration.
        let mut d = record(22, 0, 0, &[]);
        d.extend_from_slice(&[22, 0x03]);
        d.extend(record(22, 0, 1, &[]));
        let v: Vec<_> = records(&d).collect();
        assert_eq!(v.len(), 2);
        assert!(v[1].is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            for rec in records(&bytes) {
                let Ok(rec) = rec else { break };
                let _ = rec.kind();
                for hs in rec.handshakes() {
                    let Ok(hs) = hs else { break };
                    prop_assert!(hs.fragment_offset + hs.fragment_length <= hs.length);
                    let _ = (hs.is_client_hello(), hs.is_complete());
                }
            }
            let _ = starts_client_hello(&bytes);
        }
    }
}
