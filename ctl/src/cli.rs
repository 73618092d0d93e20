//! Command-line grammar (clap derive). Parsing only; the commands live in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operator CLI for the Sluice SRTP media relay.
#[derive(Debug, Parser)]
#[command(name = "sluicectl", version, about, max_term_width = 100)]
pub struct Cli {
    /// Machine-readable JSON output instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Admin API base URL (default: from control's runtime file).
    #[arg(long, global = true, env = "SLUICE_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// Admin token (default: from control's runtime file).
    #[arg(
        long,
        global = true,
        env = "SLUICE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start sluice-control and sluice-relay in the foreground; Ctrl-C stops both.
    Up {
        /// Configuration file passed to both daemons (default: the embedded configuration).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds to wait for control and the relay to come up.
        #[arg(long, default_value_t = 20, value_name = "SECS")]
        timeout: u64,
    },
    /// Show the running instance: endpoints, backend, workers, relay health.
    Status,
    /// Show per-worker packet counters and drops.
    Stats,
    /// List sessions.
    Sessions,
    /// List routes.
    Routes,
    /// Add or remove a static-key session.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Add or remove a route.
    #[command(subcommand)]
    Route(RouteCmd),
    /// Stop accepting new sessions and routes; existing media keeps flowing.
    Drain,
    /// Replace a session's keys (rotation without loss).
    Rekey {
        /// Session id.
        id: u64,
        /// New key the relay encrypts with towards the peer (base64 of key ‖ salt).
        #[arg(long, value_name = "B64")]
        tx_key: Option<String>,
        /// New key the peer encrypts with (base64 of key ‖ salt).
        #[arg(long, value_name = "B64")]
        rx_key: Option<String>,
    },
    /// Replace the running relay with a new process (the binary on disk) without losing a
    /// packet: the new relay takes the media sockets over.
    Upgrade {
        /// Find the relay's hand-over socket through this configuration's runtime_dir.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The relay's hand-over socket (default: in the runtime directory).
        #[arg(long, value_name = "PATH")]
        handover: Option<PathBuf>,
        /// The new relay binary (default: the path the running relay was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Seconds to wait for the new relay to take over and the old one to exit.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
    },
    /// Protect or unprotect one packet offline (no control needed), for debugging keys.
    #[command(subcommand)]
    Srtp(SrtpCmd),
    /// WebRTC applications (ids and developer keys).
    #[command(subcommand)]
    App(crate::webrtc_cmd::AppCmd),
    /// Developer keys of an application.
    #[command(subcommand)]
    Key(crate::webrtc_cmd::KeyCmd),
    /// Rooms and their access policy.
    #[command(subcommand)]
    Room(crate::webrtc_cmd::RoomCmd),
    /// Signed access tokens for WHIP/WHEP.
    #[command(subcommand)]
    Token(crate::webrtc_cmd::TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Add a static-key session; prints its id.
    Add {
        /// Peer media address, IP:PORT (IPv6 as [ADDR]:PORT).
        #[arg(long, value_name = "IP:PORT")]
        peer: String,
        /// SRTP profile, e.g. AEAD_AES_128_GCM or AES_CM_128_HMAC_SHA1_80.
        #[arg(long)]
        profile: String,
        /// Key the peer encrypts with; the relay decrypts with it (base64 of key ‖ salt).
        #[arg(long, value_name = "B64")]
        rx_key: String,
        /// Key the relay encrypts with towards the peer (base64 of key ‖ salt).
        #[arg(long, value_name = "B64")]
        tx_key: String,
        /// host, speaker, moderator, viewer or trunk.
        #[arg(long)]
        role: Option<String>,
        /// Inbound packet-rate cap (packets per second).
        #[arg(long, value_name = "N")]
        max_pps: Option<u32>,
    },
    /// Remove a session.
    Del {
        /// Session id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Route a publisher's media to a subscriber; prints the route id.
    Add {
        /// Publisher session id.
        #[arg(long, value_name = "ID")]
        from: u64,
        /// Only this SSRC of the publisher (default: all).
        #[arg(long, value_name = "N")]
        ssrc: Option<u32>,
        /// Subscriber session id.
        #[arg(long, value_name = "ID")]
        to: u64,
        /// Rewrite the SSRC towards the subscriber.
        #[arg(long, value_name = "N")]
        rewrite_ssrc: Option<u32>,
        /// Rewrite a payload type, FROM:TO (repeatable).
        #[arg(long = "pt", value_name = "FROM:TO")]
        pt: Vec<String>,
    },
    /// Remove a route.
    Del {
        /// Route id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SrtpCmd {
    /// RTP (or RTCP with --rtcp) in, SRTP (SRTCP) out.
    Protect(SrtpArgs),
    /// SRTP (or SRTCP with --rtcp) in, RTP (RTCP) out.
    Unprotect(SrtpArgs),
}

#[derive(Debug, Args)]
pub struct SrtpArgs {
    /// SRTP profile.
    #[arg(long)]
    pub profile: String,
    /// Master key ‖ master salt, base64 (SDES inline: form).
    #[arg(long, value_name = "B64")]
    pub key: String,
    /// The packet is RTCP / SRTCP.
    #[arg(long)]
    pub rtcp: bool,
    /// Rollover counter of the stream (SRTP only).
    #[arg(long, value_name = "N")]
    pub roc: Option<u32>,
    /// The packet in hex, or `-` to read it from stdin.
    #[arg(value_name = "HEX")]
    pub packet: String,
}
