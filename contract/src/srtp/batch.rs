//! Deferred HMAC-SHA1 tags of one fan-out, computed together by the multi-buffer kernels
//! (`sha1mb.rs`).
//!
//! [`Context::protect_rtp_batched`](super::Context::protect_rtp_batched) encrypts each
//! subscriber's copy in its transmit slot and notes here where its tag goes; [`MacBatch::finish`]
//! then authenticates up to 16 packets per kernel call and writes the tags. Owns: the pending
//! jobs (a fixed array: a full batch makes the caller protect at once). May not touch: stream
//! state, keys' lifetimes. Allocates nothing after construction.

use super::sha1mb::{hmac_sha1_batch, HmacState, Kernel, MacInput, MAX_LANES};

/// Most tags one batch defers; further packets are protected at once.
pub const MAX_PENDING: usize = 128;

#[derive(Clone, Copy)]
struct Pending {
    key: HmacState,
    /// Where the packet starts in the arena, and its length before the tag.
    at: usize,
    len: usize,
    roc: [u8; 4],
    tag_len: usize,
}

/// Tags waiting for [`MacBatch::finish`].
pub struct MacBatch {
    jobs: Box<[Pending; MAX_PENDING]>,
    n: usize,
    kernel: Kernel,
}

impl Default for MacBatch {
    fn default() -> Self {
        MacBatch::new()
    }
}

impl MacBatch {
    /// A batch on the widest kernel this CPU runs (AVX-512, AVX2); on a CPU with neither it
    /// defers nothing, as [`MacBatch::single_buffer`].
    pub fn new() -> MacBatch {
        MacBatch::with_kernel(Kernel::best())
    }

    /// A batch that defers nothing: every packet is protected at once on the single-buffer
    /// path (SHA-NI), as before multi-buffer SHA-1 existed. The baseline of the engine bench.
    pub fn single_buffer() -> MacBatch {
        MacBatch::with_kernel(Kernel::Single)
    }

    fn with_kernel(kernel: Kernel) -> MacBatch {
        let empty = Pending {
            key: HmacState::new(&[]),
            at: 0,
            len: 0,
            roc: [0; 4],
            tag_len: 0,
        };
        MacBatch {
            jobs: Box::new([empty; MAX_PENDING]),
            n: 0,
            kernel,
        }
    }

    /// Whether packets are deferred to a multi-buffer kernel.
    pub fn is_multi_buffer(&self) -> bool {
        self.kernel != Kernel::Single
    }

    /// Tags not yet written.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether another packet may be deferred.
    pub(crate) fn has_room(&self) -> bool {
        self.is_multi_buffer() && self.n < MAX_PENDING
    }

    pub(crate) fn push(
        &mut self,
        key: HmacState,
        at: usize,
        len: usize,
        roc: [u8; 4],
        tag_len: usize,
    ) {
        self.jobs[self.n] = Pending {
            key,
            at,
            len,
            roc,
            tag_len,
        };
        self.n += 1;
    }

    /// Compute every deferred tag over `arena` (the buffer whose offsets were passed to
    /// `protect_rtp_batched`, unchanged since) and write it after its packet. Empties the batch.
    pub fn finish(&mut self, arena: &mut [u8]) {
        let mut tags = [[0u8; 20]; MAX_LANES];
        for chunk in self.jobs[..self.n].chunks(MAX_LANES) {
            {
                // Lanes past the chunk's end are never read.
                let mut inputs = [MacInput {
                    key: &chunk[0].key,
                    a: &[],
                    b: &[],
                }; MAX_LANES];
                for (i, j) in inputs.iter_mut().zip(chunk) {
                    *i = MacInput {
                        key: &j.key,
                        a: &arena[j.at..j.at + j.len],
                        b: &j.roc,
                    };
                }
                hmac_sha1_batch(self.kernel, &inputs[..chunk.len()], &mut tags);
            }
            for (j, t) in chunk.iter().zip(&tags) {
                let end = j.at + j.len;
                arena[end..end + j.tag_len].copy_from_slice(&t[..j.tag_len]);
            }
        }
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::{Context, ContextOptions, MasterKey, Profile};

    /// Batched protect of a fan-out writes byte for byte what protect_rtp writes, in every
    /// profile, for fan-outs across the lane counts and the batch's capacity, with packets of
    /// different lengths in one batch; the receiver accepts every packet.
    #[test]
    fn batched_protect_matches_protect_rtp() {
        for profile in Profile::ALL {
            for fanout in [1usize, 2, 3, 10, 16, 17, 40, MAX_PENDING + 5] {
                let slot = 1300;
                let mut arena = vec![0u8; fanout * slot];
                let mut batch = MacBatch::new();
                let mut want = Vec::new();
                let mut lens = Vec::new();
                for o in 0..fanout {
                    let km: Vec<u8> = (0..profile.key_material_len())
                        .map(|i| (i * 13 + o * 7) as u8)
                        .collect();
                    let key = MasterKey::new(profile, &km).unwrap();
                    let mut a = Context::new(key, ContextOptions::default()).unwrap();
                    let mut b = Context::new(key, ContextOptions::default()).unwrap();
                    let plen = 12 + 1100 + (o % 3) * 31;
                    let mut pkt = vec![0u8; slot];
                    pkt[0] = 0x80;
                    pkt[2..4].copy_from_slice(&(o as u16).to_be_bytes());
                    pkt[8..12].copy_from_slice(&(0x1000 + o as u32).to_be_bytes());
                    for (i, x) in pkt[12..plen].iter_mut().enumerate() {
                        *x = (i as u8) ^ (o as u8);
                    }
                    let at = o * slot;
                    arena[at..at + slot].copy_from_slice(&pkt);
                    let n = a
                        .protect_rtp_batched(&mut arena[at..at + slot], plen, at, &mut batch)
                        .unwrap();
                    let m = b.protect_rtp(&mut pkt, plen).unwrap();
                    assert_eq!(n, m);
                    want.push(pkt[..m].to_vec());
                    lens.push(n);
                    let mut rx = Context::new(key, ContextOptions::default()).unwrap();
                    let mut w = pkt.clone();
                    assert_eq!(rx.unprotect_rtp(&mut w, m), Ok(plen));
                }
                batch.finish(&mut arena);
                assert!(batch.is_empty());
                for (o, w) in want.iter().enumerate() {
                    let at = o * slot;
                    assert_eq!(
                        &arena[at..at + lens[o]],
                        &w[..],
                        "{profile:?} fan-out {fanout} output {o}"
                    );
                }
            }
        }
    }
}
