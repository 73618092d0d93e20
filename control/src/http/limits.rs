//! Connection admission for one HTTP listener: a cap on open connections in total and per
//! source (an IPv4 address, or an IPv6 /64, which one host or one customer line usually gets
//! whole). A connection holds a [`Slot`] for as long as it is open; dropping the slot gives it
//! back.
//!
//! Memory: one table entry per source with an open connection, so at most
//! `max_connections` entries. Owns: the counts. May not touch: sockets.

use super::stats::Refused;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What one connection's source counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// A unix-socket peer: counted in the total only.
    Local,
}

impl Source {
    /// IPv4-mapped IPv6 addresses count as the IPv4 address.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6Prefix((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// The caps of one listener and its open connections.
#[derive(Debug)]
pub struct ConnTable {
    max_total: usize,
    max_per_source: usize,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

impl ConnTable {
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            max_total,
            max_per_source,
            inner: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent under a panic: every update is one statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a slot for a new connection from `source`, or say which cap refuses it.
    pub fn admit(self: &Arc<Self>, source: Source) -> Result<Slot, Refused> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(Refused::ConnectionLimit);
        }
        if source != Source::Local {
            let n = c.by_source.entry(source).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Refused::PerAddressLimit);
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Slot {
            table: self.clone(),
            source,
        })
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    fn release(&self, source: Source) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&source);
            }
        }
    }
}

/// One open connection's place in its [`ConnTable`].
#[derive(Debug)]
pub struct Slot {
    table: Arc<ConnTable>,
    source: Source,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_total_caps() {
        let t = ConnTable::new(5, 2);
        let a = Source::of("192.0.2.1".parse().unwrap());
        let a_mapped = Source::of("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(a, a_mapped);
        let s1 = t.admit(a).unwrap();
        let _s2 = t.admit(a_mapped).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Refused::PerAddressLimit);
        // One /64: two addresses of it share the cap.
        let v6a = Source::of("2001:db8::1".parse().unwrap());
        let v6b = Source::of("2001:db8::ffff:2".parse().unwrap());
        assert_eq!(v6a, v6b);
        let _s3 = t.admit(v6a).unwrap();
        let _s4 = t.admit(v6b).unwrap();
        assert_eq!(t.admit(v6a).unwrap_err(), Refused::PerAddressLimit);
        let _s5 = t.admit(Source::Local).unwrap();
        assert_eq!(t.open(), 5);
        assert_eq!(
            t.admit(Source::of("198.51.100.7".parse().unwrap()))
                .unwrap_err(),
            Refused::ConnectionLimit
        );
        drop(s1);
        assert_eq!(t.open(), 4);
        let _again = t.admit(a).unwrap();
        assert_eq!(t.counts().by_source.len(), 2);
    }
}
