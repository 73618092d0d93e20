//! The Dependency Descriptor RTP header extension (AV1 RTP specification, appendix A,
//! "Dependency Descriptor RTP Header Extension"), read, and re-written with a new active
//! decode targets mask.
//!
//! Every packet of a frame carries the mandatory fields (start and end of frame, template id,
//! frame number); the first packet of a key frame also carries the template dependency
//! structure: the frame templates (spatial and temporal id, decode target indications,
//! reference frame differences, chain differences), the chains protecting each decode
//! target and the render resolutions. A later frame names a template and may override its
//! DTIs, frame differences and chain differences. [`parse`] resolves a packet against the
//! last structure into a [`Frame`]: what a forwarder needs to decide, per subscriber, whether
//! the frame belongs to the decode target it selected and whether its references were sent.
//!
//! Every bound is fixed ([`MAX_TEMPLATES`], [`MAX_DECODE_TARGETS`], [`MAX_CHAINS`],
//! [`MAX_SPATIAL`] x [`MAX_TEMPORAL`], [`MAX_FDIFFS`]); a descriptor beyond them is refused
//! with a typed error, never truncated. Nothing allocates: the structure is a fixed-size
//! value the caller keeps.
//!
//! Owns: the bit layout of the extension element (its value, without the RFC 8285 element
//! header). May not touch: RTP headers, forwarding state.

/// Most frame templates of one structure (the 6-bit template id space).
pub const MAX_TEMPLATES: usize = 64;
/// Most decode targets (the 5-bit `dt_cnt_minus_one`).
pub const MAX_DECODE_TARGETS: usize = 32;
/// Most chains (at most one per decode target).
pub const MAX_CHAINS: usize = 32;
/// Most spatial layers of one structure.
pub const MAX_SPATIAL: usize = 8;
/// Most temporal layers of one structure.
pub const MAX_TEMPORAL: usize = 4;
/// Most reference frame differences of one template or one frame.
pub const MAX_FDIFFS: usize = 8;
/// Shortest element: the mandatory fields.
pub const MANDATORY_LEN: usize = 3;
/// Longest element value (the two-byte header form's limit, RFC 8285 §4.3).
pub const MAX_LEN: usize = 255;

/// Why a Dependency Descriptor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DdError {
    /// Fewer bits than the fields announced so far need.
    #[error("dependency descriptor truncated")]
    Truncated,
    /// Longer than any extension element value.
    #[error("dependency descriptor of {0} bytes is longer than {MAX_LEN}")]
    TooLong(usize),
    /// The descriptor relies on a template structure none was received for (a subscriber's
    /// first packets before a key frame).
    #[error("dependency descriptor without a known template structure")]
    NoStructure,
    /// The frame names a template the structure does not have.
    #[error("template id {0} is not in the structure")]
    UnknownTemplate(u8),
    /// More templates than [`MAX_TEMPLATES`].
    #[error("more than {MAX_TEMPLATES} templates")]
    TooManyTemplates,
    /// A spatial or temporal layer beyond [`MAX_SPATIAL`] x [`MAX_TEMPORAL`].
    #[error("layer beyond {MAX_SPATIAL} spatial x {MAX_TEMPORAL} temporal")]
    TooManyLayers,
    /// More reference frame differences than [`MAX_FDIFFS`].
    #[error("more than {MAX_FDIFFS} frame differences")]
    TooManyFdiffs,
}

/// Decode target indication (AV1 RTP specification, A.8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Dti {
    /// Not associated with the decode target.
    NotPresent = 0,
    /// Not referenced by any frame of the decode target that follows.
    Discardable = 1,
    /// A switch point: every later frame of the decode target references only it or later
    /// frames of it.
    Switch = 2,
    /// Needed to decode the decode target.
    Required = 3,
}

impl Dti {
    fn from_bits(b: u64) -> Dti {
        match b & 3 {
            0 => Dti::NotPresent,
            1 => Dti::Discardable,
            2 => Dti::Switch,
            _ => Dti::Required,
        }
    }
}

/// One frame template of a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Template {
    pub spatial: u8,
    pub temporal: u8,
    /// Two bits per decode target, target 0 in the low bits ([`Dti`]).
    pub dtis: u64,
    pub fdiff_count: u8,
    pub fdiffs: [u8; MAX_FDIFFS],
    /// Per chain, the difference to the previous frame of that chain (0: none).
    pub chain_fdiffs: [u8; MAX_CHAINS],
}

/// A template dependency structure (A.8.3 `template_dependency_structure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Structure {
    pub template_id_offset: u8,
    pub decode_targets: u8,
    pub template_count: u8,
    pub chain_count: u8,
    pub templates: [Template; MAX_TEMPLATES],
    /// The chain protecting each decode target (when `chain_count` > 0).
    pub protected_by: [u8; MAX_CHAINS],
    /// Highest spatial and temporal layer of each decode target (A.8.3.2).
    pub target_spatial: [u8; MAX_DECODE_TARGETS],
    pub target_temporal: [u8; MAX_DECODE_TARGETS],
    pub max_spatial: u8,
    pub max_temporal: u8,
    /// Render width and height per spatial layer, when present.
    pub resolutions: Option<[(u16, u16); MAX_SPATIAL]>,
}

impl Default for Structure {
    fn default() -> Structure {
        Structure {
            template_id_offset: 0,
            decode_targets: 0,
            template_count: 0,
            chain_count: 0,
            templates: [Template::default(); MAX_TEMPLATES],
            protected_by: [0; MAX_CHAINS],
            target_spatial: [0; MAX_DECODE_TARGETS],
            target_temporal: [0; MAX_DECODE_TARGETS],
            max_spatial: 0,
            max_temporal: 0,
            resolutions: None,
        }
    }
}

impl Structure {
    /// The mask of every decode target of this structure.
    pub fn all_targets(&self) -> u32 {
        mask_of(self.decode_targets)
    }
}

fn mask_of(n: u8) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// The mandatory fields, readable without any structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mandatory {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub template_id: u8,
    pub frame_number: u16,
}

impl Mandatory {
    pub fn parse(b: &[u8]) -> Result<Mandatory, DdError> {
        let h = b.get(..MANDATORY_LEN).ok_or(DdError::Truncated)?;
        Ok(Mandatory {
            start_of_frame: h[0] & 0x80 != 0,
            end_of_frame: h[0] & 0x40 != 0,
            template_id: h[0] & 0x3F,
            frame_number: u16::from_be_bytes([h[1], h[2]]),
        })
    }
}

/// One packet's descriptor resolved against its structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    /// Two bits per decode target ([`Dti`]).
    pub dtis: u64,
    pub fdiff_count: u8,
    pub fdiffs: [u16; MAX_FDIFFS],
    pub chain_fdiffs: [u8; MAX_CHAINS],
    /// The packet carried a template dependency structure (written to the caller's).
    pub structure: bool,
    /// The active decode targets the packet states: its explicit mask, all targets of a new
    /// structure, `None` when it says nothing (the last one stays).
    pub active_targets: Option<u32>,
    /// Bit position where the active decode targets mask is (or would be) and its width,
    /// and whether the packet carries one: what [`write_active_targets`] splices.
    mask_at: u16,
    mask_len: u8,
    mask_present: bool,
    extended: bool,
}

/// Where a packet's active decode targets mask is (or would be) in its descriptor: all that
/// [`write_active_targets_at`] needs of its [`Frame`] (a copy of a few bytes where a whole
/// frame is about a hundred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskSpot {
    mask_at: u16,
    mask_len: u8,
    mask_present: bool,
    extended: bool,
}

impl Frame {
    /// Where this frame's descriptor has (or would have) its active decode targets mask.
    pub fn mask_spot(&self) -> MaskSpot {
        MaskSpot {
            mask_at: self.mask_at,
            mask_len: self.mask_len,
            mask_present: self.mask_present,
            extended: self.extended,
        }
    }

    /// The indication of this frame for decode target `dt` (out of range: not present).
    pub fn dti(&self, dt: u8) -> Dti {
        if usize::from(dt) >= MAX_DECODE_TARGETS {
            return Dti::NotPresent;
        }
        Dti::from_bits(self.dtis >> (2 * u32::from(dt)))
    }

    /// The decode targets this frame is part of (its indication is not "not present"), a bit
    /// each: the pairs of `dtis` folded and packed with shifts, no loop over the targets
    /// (it runs for every packet of every SVC output).
    pub fn present_targets(&self) -> u32 {
        let mut x = (self.dtis | (self.dtis >> 1)) & 0x5555_5555_5555_5555;
        x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
        x = (x | (x >> 2)) & 0x0f0f_0f0f_0f0f_0f0f;
        x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
        x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
        x = (x | (x >> 16)) & 0x0000_0000_ffff_ffff;
        x as u32
    }

    /// The frames this one references (frame numbers), `fdiff_count` of them.
    pub fn references(&self) -> impl Iterator<Item = u16> + '_ {
        let n = usize::from(self.fdiff_count).min(MAX_FDIFFS);
        self.fdiffs[..n]
            .iter()
            .map(|&d| self.frame_number.wrapping_sub(d))
    }

    /// The previous frame of chain `c`, `None` when the frame starts the chain (difference 0).
    pub fn chain_previous(&self, c: u8) -> Option<u16> {
        match self.chain_fdiffs.get(usize::from(c)) {
            Some(&d) if d > 0 => Some(self.frame_number.wrapping_sub(u16::from(d))),
            _ => None,
        }
    }
}

/// MSB-first bit reader over the element value.
struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        if self.pos + n as usize > self.b.len() * 8 {
            return Err(DdError::Truncated);
        }
        let mut v = 0u32;
        for _ in 0..n {
            let byte = self.b[self.pos / 8];
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DdError> {
        Ok(self.f(1)? == 1)
    }

    /// Non-symmetric unsigned value below `n` (A.8.1 `ns(n)`).
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        let w = 32 - n.leading_zeros();
        let m = (1u32 << w) - n;
        let v = self.f(w.saturating_sub(1))?;
        if v < m {
            return Ok(v);
        }
        let extra = self.f(1)?;
        Ok((v << 1) - m + extra)
    }
}

/// Read the descriptor `b` (the element value). A packet that carries a structure writes it
/// into `new` and is resolved against it; any other against `known`.
pub fn parse(b: &[u8], known: Option<&Structure>, new: &mut Structure) -> Result<Frame, DdError> {
    if b.len() > MAX_LEN {
        return Err(DdError::TooLong(b.len()));
    }
    let m = Mandatory::parse(b)?;
    let mut r = Bits { b, pos: 24 };
    let extended = b.len() > MANDATORY_LEN;
    let (mut has_structure, mut mask_present) = (false, false);
    let (mut custom_dtis, mut custom_fdiffs, mut custom_chains) = (false, false, false);
    if extended {
        has_structure = r.flag()?;
        mask_present = r.flag()?;
        custom_dtis = r.flag()?;
        custom_fdiffs = r.flag()?;
        custom_chains = r.flag()?;
    }
    let mut active = None;
    if has_structure {
        read_structure(&mut r, new)?;
        active = Some(new.all_targets());
    }
    let s: &Structure = if has_structure {
        new
    } else {
        known.ok_or(DdError::NoStructure)?
    };
    let mask_at = r.pos as u16;
    let mask_len = s.decode_targets;
    if mask_present {
        active = Some(r.f(u32::from(mask_len))?);
    }
    let index = (usize::from(m.template_id) + MAX_TEMPLATES - usize::from(s.template_id_offset))
        % MAX_TEMPLATES;
    if index >= usize::from(s.template_count) {
        return Err(DdError::UnknownTemplate(m.template_id));
    }
    let t = &s.templates[index];
    let mut f = Frame {
        start_of_frame: m.start_of_frame,
        end_of_frame: m.end_of_frame,
        frame_number: m.frame_number,
        spatial: t.spatial,
        temporal: t.temporal,
        dtis: t.dtis,
        fdiff_count: t.fdiff_count,
        fdiffs: t.fdiffs.map(u16::from),
        chain_fdiffs: t.chain_fdiffs,
        structure: has_structure,
        active_targets: active,
        mask_at,
        mask_len,
        mask_present,
        extended,
    };
    if custom_dtis {
        let mut dtis = 0u64;
        for dt in 0..u32::from(s.decode_targets) {
            dtis |= u64::from(r.f(2)?) << (2 * dt);
        }
        f.dtis = dtis;
    }
    if custom_fdiffs {
        let mut n = 0usize;
        let mut size = r.f(2)?;
        while size != 0 {
            if n >= MAX_FDIFFS {
                return Err(DdError::TooManyFdiffs);
            }
            f.fdiffs[n] = r.f(4 * size)? as u16 + 1;
            n += 1;
            size = r.f(2)?;
        }
        f.fdiff_count = n as u8;
    }
    if custom_chains {
        for c in 0..usize::from(s.chain_count) {
            f.chain_fdiffs[c] = r.f(8)? as u8;
        }
    }
    Ok(f)
}

fn read_structure(r: &mut Bits<'_>, s: &mut Structure) -> Result<(), DdError> {
    s.template_id_offset = r.f(6)? as u8;
    let dts = r.f(5)? as usize + 1;
    s.decode_targets = dts as u8;
    // Template layers (A.8.3.1).
    let (mut spatial, mut temporal, mut max_temporal) = (0u8, 0u8, 0u8);
    let mut count = 0usize;
    loop {
        if count >= MAX_TEMPLATES {
            return Err(DdError::TooManyTemplates);
        }
        s.templates[count] = Template {
            spatial,
            temporal,
            ..Template::default()
        };
        count += 1;
        match r.f(2)? {
            0 => {}
            1 => {
                temporal += 1;
                if usize::from(temporal) >= MAX_TEMPORAL {
                    return Err(DdError::TooManyLayers);
                }
                max_temporal = max_temporal.max(temporal);
            }
            2 => {
                temporal = 0;
                spatial += 1;
                if usize::from(spatial) >= MAX_SPATIAL {
                    return Err(DdError::TooManyLayers);
                }
            }
            _ => break,
        }
    }
    s.template_count = count as u8;
    s.max_spatial = spatial;
    s.max_temporal = max_temporal;
    for t in &mut s.templates[..count] {
        for dt in 0..dts {
            t.dtis |= u64::from(r.f(2)?) << (2 * dt);
        }
    }
    for t in &mut s.templates[..count] {
        let mut n = 0usize;
        while r.flag()? {
            if n >= MAX_FDIFFS {
                return Err(DdError::TooManyFdiffs);
            }
            t.fdiffs[n] = r.f(4)? as u8 + 1;
            n += 1;
        }
        t.fdiff_count = n as u8;
    }
    // Chains (A.8.3.3): at most one per decode target, so always within MAX_CHAINS.
    let chains = r.ns(dts as u32 + 1)? as usize;
    s.chain_count = chains as u8;
    s.protected_by = [0; MAX_CHAINS];
    if chains > 0 {
        for dt in 0..dts {
            s.protected_by[dt] = r.ns(chains as u32)? as u8;
        }
        for t in &mut s.templates[..count] {
            for c in 0..chains {
                t.chain_fdiffs[c] = r.f(4)? as u8;
            }
        }
    }
    // Decode target layers (A.8.3.2): the highest layers of the templates present in it.
    for dt in 0..dts {
        let (mut sp, mut tp) = (0u8, 0u8);
        for t in &s.templates[..count] {
            if (t.dtis >> (2 * dt)) & 3 != 0 {
                sp = sp.max(t.spatial);
                tp = tp.max(t.temporal);
            }
        }
        s.target_spatial[dt] = sp;
        s.target_temporal[dt] = tp;
    }
    s.resolutions = if r.flag()? {
        let mut res = [(0u16, 0u16); MAX_SPATIAL];
        for e in res.iter_mut().take(usize::from(spatial) + 1) {
            let w = r.f(16)? as u16;
            let h = r.f(16)? as u16;
            *e = (w.wrapping_add(1), h.wrapping_add(1));
        }
        Some(res)
    } else {
        None
    };
    Ok(())
}

/// MSB-first bit writer.
struct Writer<'a> {
    b: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, v: u32, n: u32) -> Result<(), DdError> {
        if self.pos + n as usize > self.b.len() * 8 {
            return Err(DdError::TooLong(self.pos.div_ceil(8) + n as usize));
        }
        for i in (0..n).rev() {
            let bit = ((v >> i) & 1) as u8;
            let (byte, shift) = (self.pos / 8, 7 - self.pos % 8);
            self.b[byte] = (self.b[byte] & !(1 << shift)) | (bit << shift);
            self.pos += 1;
        }
        Ok(())
    }

    /// Copy bits `from..to` of `src`.
    fn copy(&mut self, src: &[u8], from: usize, to: usize) -> Result<(), DdError> {
        let mut r = Bits { b: src, pos: from };
        let mut left = to.saturating_sub(from);
        while left > 0 {
            let n = left.min(16) as u32;
            let v = r.f(n)?;
            self.put(v, n)?;
            left -= n as usize;
        }
        Ok(())
    }
}

/// Write into `out` the descriptor `src` (parsed as `f`) with the active decode targets mask
/// `mask` stated explicitly: the flag is set and the mask spliced in after the structure (a
/// descriptor of only the mandatory fields gains the extended flags). Returns the new length;
/// every other field is kept bit for bit.
pub fn write_active_targets(
    src: &[u8],
    f: &Frame,
    mask: u32,
    out: &mut [u8],
) -> Result<usize, DdError> {
    write_active_targets_at(src, f.mask_spot(), mask, out)
}

/// [`write_active_targets`] by the mask's place alone ([`Frame::mask_spot`]).
pub fn write_active_targets_at(
    src: &[u8],
    f: MaskSpot,
    mask: u32,
    out: &mut [u8],
) -> Result<usize, DdError> {
    let total = src.len() * 8;
    let mut w = Writer { b: out, pos: 0 };
    w.copy(src, 0, 24)?;
    let tail_from = if f.extended {
        // Flags: structure, mask present (set), then the three custom flags as they were.
        w.copy(src, 24, 25)?;
        w.put(1, 1)?;
        w.copy(src, 26, usize::from(f.mask_at))?;
        usize::from(f.mask_at)
            + if f.mask_present {
                usize::from(f.mask_len)
            } else {
                0
            }
    } else {
        w.put(0b01000, 5)?;
        24
    };
    let n = u32::from(f.mask_len);
    w.put(mask & mask_of(f.mask_len), n)?;
    // The rest: the custom fields and the source's zero padding, then padding to a byte.
    w.copy(src, tail_from, total)?;
    let len = w.pos.div_ceil(8);
    let pad = len * 8 - w.pos;
    w.put(0, pad as u32)?;
    if len > MAX_LEN {
        return Err(DdError::TooLong(len));
    }
    Ok(len)
}

#[cfg(test)]
#[path = "dd_tests.rs"]
mod tests;
