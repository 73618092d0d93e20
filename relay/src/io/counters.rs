//! A worker's own counters, one list of names in two forms: [`IoCounters`], plain integers
//! written on the worker's thread (its backend counts receives, sends and syscalls; the worker
//! adds its loop's turns and its slow-path client's counts), and [`SharedCounters`], the same
//! counters as atomics, published once per loop turn for other threads. (What the forwarding
//! engine counts goes to the worker's block in shared memory.)

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A worker's counters as plain integers (see the module doc); also what
        /// [`SharedCounters::snapshot`] returns.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct IoCounters {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// [`IoCounters`] published for other threads: written only by the worker's thread.
        #[derive(Debug, Default)]
        #[repr(align(64))]
        pub struct SharedCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl SharedCounters {
            /// Read every counter (relaxed; each is monotonic).
            pub fn snapshot(&self) -> IoCounters {
                IoCounters {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }

            /// Publish `c` (relaxed stores; one writer).
            pub fn store(&self, c: &IoCounters) {
                $(self.$name.store(c.$name, Ordering::Relaxed);)*
            }
        }

        impl std::ops::Add for IoCounters {
            type Output = IoCounters;
            fn add(self, o: IoCounters) -> IoCounters {
                IoCounters {
                    $($name: self.$name + o.$name,)*
                }
            }
        }
    };
}

counters! {
    /// Datagrams handed to the handler.
    rx_packets,
    rx_bytes,
    /// Datagrams larger than the receive buffers ([`super::BackendParams::datagram_size`]):
    /// truncated by the kernel and dropped (the engine counts them as drop reason
    /// `oversized` in shared memory).
    rx_oversized,
    /// Receive errors (bad address, failed receive).
    rx_errors,
    /// io_uring: times the multishot receive was re-armed.
    rx_rearms,
    /// io_uring: the provided-buffer ring ran dry (ENOBUFS); the datagram stays queued in
    /// the socket and the receive is re-armed, so this is back-pressure, not loss.
    rx_nobufs,
    /// Datagrams the kernel accepted for sending.
    tx_packets,
    tx_bytes,
    /// Datagrams lost to send errors (socket full, unreachable, GSO refused, ...).
    tx_errors,
    /// Datagrams that could not be addressed (an IPv6 destination on an IPv4 socket).
    tx_unroutable,
    /// GSO trains (sends of more than one segment).
    tx_gso_trains,
    /// xdp: datagrams received through the AF_XDP socket (included in `rx_packets`).
    xdp_rx_frames,
    /// xdp: datagrams sent as frames built here through the AF_XDP socket (included in
    /// `tx_packets`).
    xdp_tx_frames,
    /// xdp: frames the kernel dropped before our RX ring because it was full
    /// (`XDP_STATISTICS` `rx_ring_full`; read every few hundred turns).
    xdp_rx_ring_full,
    /// xdp: frames the kernel dropped for other reasons: no free frame in the fill ring, or a
    /// frame larger than a UMEM chunk (`XDP_STATISTICS` `rx_dropped` +
    /// `rx_fill_ring_empty_descs`).
    xdp_rx_dropped,
    /// xdp: frames from the RX ring that were not well-formed IPv4/UDP (dropped).
    xdp_rx_invalid,
    /// xdp: datagrams dropped because no transmit frame was free (the kernel had not
    /// completed earlier sends).
    xdp_tx_ring_full,
    /// xdp: datagrams sent through the kernel socket instead (IPv6, no route through the
    /// interface, no neighbour entry yet).
    xdp_tx_kernel,
    /// xdp: route and neighbour lookups over netlink (destination cache misses).
    xdp_route_lookups,
    /// Syscalls made by the backend (io_uring_enter, recvmmsg, sendmmsg, epoll_wait).
    syscalls,
    /// The worker's loop turns.
    turns,
    /// Turns longer than the worker's stall threshold.
    stalls,
    /// Datagrams handed to control.
    slow_up_sent,
    /// Datagrams for control dropped (control absent or its socket full, or no slow path).
    slow_up_dropped,
    /// Replies from control queued for their peers.
    slow_down_sent,
    /// Replies from control that could not be queued (bad message, or dropped).
    slow_down_dropped,
    /// Successful (re)connections to control.
    slow_connects,
    /// ICE-TCP connections accepted.
    tcp_accepted,
    /// ICE-TCP connections closed at once because the worker held `relay.tcp.max_connections`.
    tcp_refused_full,
    /// Closed: the first frame was no STUN binding request.
    tcp_closed_garbage,
    /// Closed: a frame longer than `relay.max_datagram_bytes` was announced.
    tcp_closed_oversized,
    /// Closed: no answered STUN binding within `relay.tcp.handshake_timeout_ms`.
    tcp_closed_timeout,
    /// Closed: the peer did not read what the relay sent (its send buffer stayed full).
    tcp_closed_slow_reader,
    /// Closed by the peer (end of stream or a socket error).
    tcp_closed_peer,
    /// RFC 4571 frames received and handed to the engine.
    tcp_rx_frames,
    /// Frames written to ICE-TCP connections.
    tcp_tx_frames,
    /// Frames not written because the connection's send buffer was full (the frame is lost,
    /// as a UDP datagram would be).
    tcp_tx_dropped,
    /// Datagrams for ICE-TCP peers this worker handed to the TCP owner (worker 0).
    tcp_forwarded,
    /// Datagrams for ICE-TCP peers dropped because the hand-over queue to the TCP owner was
    /// full (`relay.tcp.forward_queue_frames`).
    tcp_forward_full,
    /// Datagrams for an ICE-TCP peer key no open connection holds (closed meanwhile): dropped,
    /// never sent as UDP.
    tcp_unroutable,
}
