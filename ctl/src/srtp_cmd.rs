//! `sluicectl srtp protect|unprotect`: one packet through `contract::srtp`, offline.
//!
//! Owns: reading the packet (argument or stdin), building a one-shot [`Context`], and
//! mapping SRTP errors to messages. May not touch: the network or control.

use std::io::Read;

use contract::srtp::{Context, ContextOptions, Error as SrtpError};

use crate::cli::SrtpArgs;
use crate::error::{CtlError, Result};
use crate::validate;

/// Largest packet accepted (a UDP datagram).
const MAX_PACKET: usize = 65_535;

/// Run the transform; returns the output packet.
pub fn run(args: &SrtpArgs, protect: bool) -> Result<Vec<u8>> {
    let profile = validate::profile(&args.profile)?;
    let key = validate::key("--key", profile, &args.key)?;
    if args.rtcp && args.roc.is_some() {
        return Err(CtlError::usage(
            "--roc applies to SRTP only; SRTCP carries its index in the packet",
        ));
    }
    let input = if args.packet == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(4 * MAX_PACKET as u64)
            .read_to_string(&mut s)
            .map_err(|e| CtlError::usage(format!("packet: cannot read stdin: {e}")))?;
        s
    } else {
        args.packet.clone()
    };
    let packet = validate::hex(&input)?;
    if packet.len() > MAX_PACKET {
        return Err(CtlError::usage(format!(
            "packet: {} bytes is larger than a UDP datagram",
            packet.len()
        )));
    }
    // A well-formed RTP/RTCP header starts with version 2 (RFC 3550 §5.1, §6.4.1).
    let min = if args.rtcp { 8 } else { 12 };
    if packet.len() < min || packet[0] >> 6 != 2 {
        return Err(CtlError::usage(format!(
            "packet: not an {} packet (needs at least {min} bytes starting with version 2)",
            if args.rtcp { "RTCP/SRTCP" } else { "RTP/SRTP" }
        )));
    }

    let mut ctx = Context::new(key, ContextOptions::default()).map_err(srtp_error)?;
    if let Some(roc) = args.roc {
        // The SSRC is bytes 8..12 of the RTP header (RFC 3550 §5.1); length checked above.
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        ctx.set_roc(ssrc, roc).map_err(srtp_error)?;
    }
    let overhead = if args.rtcp {
        profile.srtcp_overhead()
    } else {
        profile.srtp_overhead()
    };
    let len = packet.len();
    let mut buf = packet;
    buf.resize(len + overhead, 0);
    let n = match (protect, args.rtcp) {
        (true, false) => ctx.protect_rtp(&mut buf, len),
        (false, false) => ctx.unprotect_rtp(&mut buf, len),
        (true, true) => ctx.protect_rtcp(&mut buf, len),
        (false, true) => ctx.unprotect_rtcp(&mut buf, len),
    }
    .map_err(srtp_error)?;
    buf.truncate(n);
    Ok(buf)
}

fn srtp_error(e: SrtpError) -> CtlError {
    CtlError::Other(format!("srtp: {e}"))
}
