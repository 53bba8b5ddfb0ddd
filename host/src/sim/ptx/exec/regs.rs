//! A block's registers, laid out register-major within each warp: the 32 lanes' copies of one
//! register are 32 adjacent words. The warp engine then applies an instruction to a warp as a
//! loop over whole rows (contiguous, fixed length, which the compiler vectorizes), where a
//! lane-major layout made every lane's operand a load one `nregs` stride apart. One thread's
//! registers are a strided view (`Lane`), which the per-thread paths use; a device function's
//! frame keeps its registers one after another (a `Lane` of stride 1).

/// Lanes of a warp.
pub(super) const WARP: usize = 32;

/// The registers of a block's threads: per warp, `nregs` rows of 32 lanes (a partial last warp
/// has rows of 32 too; its missing lanes are never read).
#[derive(Default)]
pub(super) struct RegFile {
    words: Vec<u64>,
    nregs: usize,
}

impl RegFile {
    pub(super) fn new(nthreads: usize, nregs: usize) -> Self {
        RegFile { words: vec![0; nthreads.div_ceil(WARP) * WARP * nregs], nregs }
    }

    /// Room for `nthreads` threads of `nregs` registers in the allocation already made (a
    /// pool thread runs launch after launch). What it held stays: every block zeroes the
    /// registers it may read before writing them (clear_rows), so no value of an earlier block
    /// or launch can be seen, as between two blocks of one launch.
    pub(super) fn reshape(&mut self, nthreads: usize, nregs: usize) {
        // resize writes only the words it adds.
        self.words.resize(nthreads.div_ceil(WARP) * WARP * nregs, 0);
        self.nregs = nregs;
    }

    pub(super) fn bytes(&self) -> usize {
        self.words.capacity() * 8
    }

    pub(super) fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Zeroes registers `rows` (each below `nregs`) of every thread; None: all registers.
    pub(super) fn clear_rows(&mut self, rows: Option<&[u32]>) {
        match rows {
            // Scattered rows cost more than one fill once they are most of the registers.
            Some(rows) if rows.len() * 2 < self.nregs => {
                for warp in self.words.chunks_exact_mut(WARP * self.nregs) {
                    for &r in rows {
                        let at = r as usize * WARP;
                        warp[at..at + WARP].fill(0);
                    }
                }
            }
            _ => self.clear(),
        }
    }

    fn lane_base(&self, t: usize) -> usize {
        (t / WARP) * WARP * self.nregs + t % WARP
    }

    /// Thread `t`'s registers.
    pub(super) fn lane(&self, t: usize) -> Regs<'_> {
        Lane { words: &self.words[..], base: self.lane_base(t), stride: WARP, n: self.nregs }
    }

    pub(super) fn lane_mut(&mut self, t: usize) -> RegsMut<'_> {
        let base = self.lane_base(t);
        Lane { words: &mut self.words[..], base, stride: WARP, n: self.nregs }
    }

    /// The rows of the warp whose first thread is `w0`: register `r` of lane `l` at `r * 32 + l`.
    pub(super) fn warp(&mut self, w0: usize) -> &mut [u64] {
        let n = WARP * self.nregs;
        let at = (w0 / WARP) * n;
        &mut self.words[at..at + n]
    }
}

/// One thread's registers: `n` of them, `stride` words apart from `base` of `words`.
#[derive(Clone, Copy)]
pub(super) struct Lane<W> {
    words: W,
    base: usize,
    stride: usize,
    n: usize,
}

pub(super) type Regs<'r> = Lane<&'r [u64]>;
pub(super) type RegsMut<'r> = Lane<&'r mut [u64]>;

impl<W: AsRef<[u64]>> Lane<W> {
    /// Register `r`; 0 for a register the function does not have.
    #[inline]
    pub(super) fn get(&self, r: u32) -> u64 {
        let r = r as usize;
        if r < self.n {
            self.words.as_ref()[self.base + r * self.stride]
        } else {
            0
        }
    }

    pub(super) fn to_vec(&self) -> Vec<u64> {
        (0..self.n as u32).map(|r| self.get(r)).collect()
    }
}

impl<W: AsMut<[u64]>> Lane<W> {
    /// Sets register `r` (a register the function does not have is left alone).
    #[inline]
    pub(super) fn set(&mut self, r: u32, v: u64) {
        let r = r as usize;
        if r < self.n {
            self.words.as_mut()[self.base + r * self.stride] = v;
        }
    }
}

impl<'r> Regs<'r> {
    /// Registers one after another (a device function's frame).
    pub(super) fn flat(words: &'r [u64]) -> Self {
        Lane { n: words.len(), words, base: 0, stride: 1 }
    }
}

impl<'r> RegsMut<'r> {
    pub(super) fn flat(words: &'r mut [u64]) -> Self {
        Lane { n: words.len(), words, base: 0, stride: 1 }
    }

    pub(super) fn view(&self) -> Regs<'_> {
        Lane { words: &*self.words, base: self.base, stride: self.stride, n: self.n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_strided_views_of_register_major_rows() {
        let mut f = RegFile::new(40, 3); // a full warp and a partial one
        f.lane_mut(33).set(2, 7);
        f.lane_mut(5).set(0, 9);
        f.lane_mut(5).set(3, 1); // past its registers: ignored
        assert_eq!(f.lane(33).get(2), 7);
        assert_eq!(f.lane(5).get(0), 9);
        assert_eq!(f.lane(5).get(3), 0);
        assert_eq!(f.warp(32)[2 * WARP + 1], 7); // warp 1, register 2, lane 1
        assert_eq!(f.warp(0)[5], 9);
        assert_eq!(f.lane(5).to_vec(), vec![9, 0, 0]);
        let mut frame = vec![1, 2];
        let mut l = RegsMut::flat(&mut frame);
        l.set(1, 5);
        assert_eq!(l.view().to_vec(), vec![1, 5]);
    }
}
