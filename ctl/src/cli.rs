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
    /// Configuration file: `up` passes it to both daemons; every other command talks to the
    /// instance whose `runtime_dir` it names.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Talk to the instance whose runtime directory this is (default: the first running one
    /// of `$SLUICE_RUNTIME_DIR`, the per-user directory, `/run/sluice`).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "config")]
    pub runtime_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start sluice-control and sluice-relay in the foreground; Ctrl-C stops both.
    Up {
        /// A throw-away instance: control's state (sessions, apps, keys) lives in a fresh
        /// directory removed on stop, so every run starts empty. Not with --config.
        #[arg(long)]
        ephemeral: bool,
        /// Seconds to wait for control and the relay to come up.
        #[arg(long, default_value_t = 20, value_name = "SECS")]
        timeout: u64,
    },
    /// Show the running instance: endpoints, backend, workers, relay health. Exits 5 when
    /// the relay is down.
    Status,
    /// Show per-worker packet counters and drops.
    Stats {
        /// Per-stream statistics instead: packets, bytes, loss and jitter of every stream.
        #[arg(long)]
        streams: bool,
    },
    /// The cluster this node belongs to (Redis registry).
    #[command(subcommand)]
    Cluster(ClusterCmd),
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
    /// Accept new sessions and routes again after `drain`.
    Undrain,
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
    App(AppCmd),
    /// Developer keys of an application.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Rooms and their access policy.
    #[command(subcommand)]
    Room(RoomCmd),
    /// Signed access tokens for WHIP/WHEP.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Print a shell completion script for sluicectl on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write sluicectl's man pages (sluicectl.1 and one page per command) into a directory.
    Man {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Nodes (region, URLs, load, last heartbeat) and rooms with their owners, read from
    /// Redis through this node.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Add a static-key session; prints its id.
    Add {
        /// Peer media address, IP:PORT (IPv6 as [ADDR]:PORT). Required unless
        /// --ice-remote-ufrag is given.
        #[arg(
            long,
            value_name = "IP:PORT",
            required_unless_present = "ice_remote_ufrag"
        )]
        peer: Option<String>,
        /// The peer reaches the session by ICE checks (UDP or ICE-TCP) with this ufrag of its
        /// own; without --peer the session waits PENDING until an authenticated check binds it.
        #[arg(long, value_name = "UFRAG")]
        ice_remote_ufrag: Option<String>,
        /// The relay's ICE ufrag for this session (with --ice-pwd; default: generated).
        #[arg(long, value_name = "UFRAG", requires_all = ["ice_pwd", "ice_remote_ufrag"])]
        ice_ufrag: Option<String>,
        /// The relay's ICE password for this session (with --ice-ufrag; default: generated).
        #[arg(long, value_name = "PWD", requires_all = ["ice_ufrag", "ice_remote_ufrag"])]
        ice_pwd: Option<String>,
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
    /// List sessions with their traffic: packets in/out, last packet, state.
    List,
    /// Everything about one session: counters, auth failures, replays, last packet times,
    /// profile, peer, and its streams with loss and jitter.
    Show {
        /// Session id.
        id: u64,
    },
    /// Cap the simulcast layer a subscriber receives on its layered routes.
    Layer {
        /// Subscriber session id.
        id: u64,
        /// Highest layer, 0 (the lowest resolution) to 2, or `none` to lift the cap.
        #[arg(long, value_name = "N|none")]
        max: String,
        /// Highest VP8 temporal layer (TID) 0 to 3, or `none` (the default: no cap).
        #[arg(long, value_name = "N|none")]
        max_temporal: Option<String>,
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
        /// Answer the subscriber's NACKs as RTX (RFC 4588) with this payload type (its `apt`
        /// is the stream's); needs --rtx-ssrc, and --ssrc or --rewrite-ssrc.
        #[arg(long, value_name = "PT", requires = "rtx_ssrc")]
        rtx_pt: Option<u8>,
        /// The subscriber's RTX SSRC for this route.
        #[arg(long, value_name = "N", requires = "rtx_pt")]
        rtx_ssrc: Option<u32>,
        /// The publisher sends RTX (RFC 4588) for --ssrc with this payload type: the relay
        /// unwraps it into the stream; needs --source-rtx-ssrc and --ssrc.
        #[arg(long, value_name = "PT", requires = "source_rtx_ssrc")]
        source_rtx_pt: Option<u8>,
        /// The publisher's RTX SSRC for --ssrc (its `a=ssrc-group:FID` partner).
        #[arg(long, value_name = "N", requires = "source_rtx_pt")]
        source_rtx_ssrc: Option<u32>,
        /// Number this route's packets with the relay's own transport-wide sequence numbers in
        /// the subscriber's extension id N (1..=255, after the id map) and estimate its
        /// downlink from its transport-cc feedback.
        #[arg(long, value_name = "ID")]
        twcc_id: Option<u8>,
        /// A simulcast source: the SSRCs of its spatial layers, lowest resolution first (up
        /// to 3, comma-separated). One route per layer, all rewritten to --rewrite-ssrc; the
        /// subscriber receives one layer at a time. Prints one route id per layer.
        #[arg(
            long,
            value_name = "SSRC,...",
            value_delimiter = ',',
            conflicts_with_all = ["ssrc", "rtx_pt"],
            requires = "rewrite_ssrc"
        )]
        layers: Vec<u32>,
        /// With --layers: the highest layer the subscriber may receive (0 = the lowest).
        #[arg(long, value_name = "N", requires = "layers")]
        max_layer: Option<u8>,
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

#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// List applications.
    List,
    /// Create an application with a generated developer key (the secret is printed once).
    Add {
        /// Application id (1..=64 of A-Z a-z 0-9 - _ .).
        id: String,
    },
    /// Remove an application, its keys and rooms (its participants are disconnected).
    Del { id: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// List an application's developer key ids (never the secrets).
    List {
        #[arg(long, value_name = "APP")]
        app: String,
    },
    /// Add a developer key: generated, or `--secret` (base64url, ≥ 32 bytes); prints it once.
    Add {
        #[arg(long, value_name = "APP")]
        app: String,
        /// Key id (default: k<N>).
        #[arg(long)]
        kid: Option<String>,
        /// The secret to store instead of a generated one.
        #[arg(long, value_name = "B64URL", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Remove a developer key (tokens signed with it stop working).
    Del {
        #[arg(long, value_name = "APP")]
        app: String,
        #[arg(long)]
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoomCmd {
    /// List rooms of every application.
    List,
    /// Show a room: policy and participants.
    Show { app: String, room: String },
    /// Create a room and set its policy (no policy flags: back to the application default).
    Set(RoomSet),
    /// Remove a room (its participants are disconnected).
    Del { app: String, room: String },
}

#[derive(Debug, Args)]
pub struct RoomSet {
    pub app: String,
    pub room: String,
    /// Viewers must carry an e-mail in this domain (repeatable).
    #[arg(long = "email-domain", value_name = "DOMAIN")]
    pub email_domains: Vec<String>,
    /// Accepted token kinds: signed, stream (repeatable; default signed).
    #[arg(long = "accept", value_name = "KIND")]
    pub accept: Vec<String>,
    /// Password of Storm-style md5 stream tokens.
    #[arg(long, value_name = "PASSWORD")]
    pub stream_password: Option<String>,
    /// Minutes a stream token stays valid (default 5).
    #[arg(long, value_name = "MIN")]
    pub stream_timeout: Option<u32>,
    /// Stream tokens include the viewer's IP address.
    #[arg(long)]
    pub bind_ip: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Mint a signed token (HS256) with the application's newest developer key.
    Mint {
        #[arg(long, value_name = "APP")]
        app: String,
        #[arg(long, value_name = "ROOM")]
        room: String,
        /// host, speaker, moderator or viewer.
        #[arg(long)]
        role: String,
        /// Lifetime in seconds (default 3600, at most 86400).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// E-mail claim (checked against a room's allowed domains for viewers).
        #[arg(long, value_name = "ADDR")]
        email: Option<String>,
        /// Subject (user id; default: random).
        #[arg(long)]
        sub: Option<String>,
    },
}
