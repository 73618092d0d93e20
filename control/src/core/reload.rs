//! What a configuration reload (SIGHUP) may change while control runs, and the report of
//! what it could not.
//!
//! Changed while running: the join caps (`control.max_sessions_per_subject`,
//! `max_sessions_per_room`, `max_ssrcs_per_media`, `max_ssrcs_per_offer`),
//! `signaling_timeout_secs`, the token checks (`token_leeway_secs`,
//! `token_max_lifetime_secs`), `cors_allow_origin` and `demo_tokens`, all read at each use; and
//! (by the daemon) the admin token. Everything else is bound to listeners, sockets, files,
//! threads or the relay, and keeps its running value until a restart; the report names it.
//!
//! Owns: that split. May not touch: the running state (the core swaps the merged result in).

use contract::config::{Config, ControlConfig};

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys whose new value is in force.
    pub applied: Vec<&'static str>,
    /// Keys (or whole sections) that differ but keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The running configuration `old` with the reloadable keys of `new`, and the report.
pub fn merge(old: &Config, new: &Config) -> (Config, Report) {
    let mut r = Report::default();
    let mut m = old.clone();
    let (o, n) = (&old.control, &new.control);
    macro_rules! take {
        ($($field:ident),*) => {$(
            if o.$field != n.$field {
                m.control.$field = n.$field.clone();
                r.applied.push(concat!("control.", stringify!($field)));
            }
        )*};
    }
    take!(
        max_sessions_per_subject,
        max_sessions_per_room,
        max_ssrcs_per_media,
        max_ssrcs_per_offer,
        signaling_timeout_secs,
        token_leeway_secs,
        token_max_lifetime_secs,
        cors_allow_origin,
        demo_tokens
    );
    fixed_control_keys(o, n, &mut r.needs_restart);
    for (name, differs) in [
        ("runtime_dir", old.runtime_dir != new.runtime_dir),
        (
            "[relay] (the relay reads it at start: sluicectl upgrade applies it without loss)",
            old.relay != new.relay,
        ),
        ("[shm]", old.shm != new.shm),
        ("[srtp]", old.srtp != new.srtp),
        ("[log]", old.log != new.log),
        ("[cluster]", old.cluster != new.cluster),
        (
            "[http] (limits; the certificate files are read again on every reload)",
            old.http != new.http,
        ),
    ] {
        if differs {
            r.needs_restart.push(name);
        }
    }
    (m, r)
}

/// The `[control]` keys that only a restart applies.
fn fixed_control_keys(o: &ControlConfig, n: &ControlConfig, out: &mut Vec<&'static str>) {
    macro_rules! fixed {
        ($($field:ident),*) => {$(
            if o.$field != n.$field {
                out.push(concat!("control.", stringify!($field)));
            }
        )*};
    }
    fixed!(
        admin_listen,
        public_listen,
        public_addresses,
        state_dir,
        audit_log,
        audit_retention_days,
        audit_max_bytes,
        slow_path,
        slow_path_rate,
        slow_path_per_source_rate,
        ice_consent_timeout_secs,
        master_key_file,
        bootstrap_app,
        dtls_max_handshakes,
        dtls_max_handshakes_per_ip,
        dtls_handshake_timeout_secs
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloadable_keys_apply_the_rest_is_named() {
        let old = Config::embedded_default();
        let mut new = old.clone();
        new.control.max_sessions_per_room = 3;
        new.control.cors_allow_origin = "https://example.org".into();
        new.control.slow_path_rate = 5;
        new.relay.workers = 7;
        let (m, r) = merge(&old, &new);
        assert_eq!(m.control.max_sessions_per_room, 3);
        assert_eq!(m.control.cors_allow_origin, "https://example.org");
        assert_eq!(m.control.slow_path_rate, old.control.slow_path_rate, "kept");
        assert_eq!(m.relay, old.relay, "kept");
        assert_eq!(
            r.applied,
            ["control.max_sessions_per_room", "control.cors_allow_origin"]
        );
        assert_eq!(r.needs_restart.len(), 2, "{r:?}");
        assert_eq!(r.needs_restart[0], "control.slow_path_rate");
        assert!(r.needs_restart[1].starts_with("[relay]"));
        let (_, same) = merge(&old, &old);
        assert_eq!(same, Report::default());
    }
}
