//! Quantized matrix multiplication `y = x W^T`: `x` is `m` f32 rows, `W` a GGML-quantized
//! weight matrix stored row by row (one row per output feature), as GGUF lays it out.
//!
//! The activations are quantized once per call. Output features are split across the thread
//! pool in contiguous runs of weight rows; inside a run, each weight row is multiplied with up
//! to four activation rows at once (a `4 x 1` register tile), so a weight block is loaded and
//! unpacked once for every four rows of a prefill chunk or a batched decode step. Activation
//! rows are visited in panels that stay in L1/L2 while the run of weight rows streams past.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::activations::QuantizedActs;
use crate::dispatch::{packed_kernels, row_kernels, Isa};
use crate::formats::WeightType;
use crate::packed::{self, PackedActs, PackedMatrix};
use crate::{reference, KernelError};

/// A quantized weight matrix: `rows` output features of `cols` inputs each, laid out for the
/// instruction set that will multiply it.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: WeightType,
    rows: usize,
    cols: usize,
    isa: Isa,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    /// GGUF's own blocks, `row_bytes` per row.
    Ggml { row_bytes: usize, data: Vec<u8> },
    /// Packed rows for the 512-bit kernels (and AVX2's, for the 4-bit 32-block formats).
    Packed(PackedMatrix),
}

/// Activation rows per panel: their quantized bytes stay in cache while weight rows stream.
const PANEL_ROWS: usize = 64;
/// Below this many multiply-adds a call runs on the calling thread alone.
const PARALLEL_MIN_WORK: usize = 1 << 18;

thread_local! {
    static SCRATCH: RefCell<(QuantizedActs, PackedActs)> = RefCell::new(Default::default());
}

/// `y`'s pointer, shared by the workers of one [`QMatrix::tiled`] call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: `tiled` hands each worker its own run `j0..j1` of weight rows, and a worker writes
// only `y[i * rows + j]` for `j` in its run, so no two threads write one element; `y` is
// borrowed mutably by `tiled` for as long as any worker runs.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: the pointer is only written through at disjoint indices.
unsafe impl Sync for OutPtr {}

impl QMatrix {
    /// Takes GGUF bytes (`rows` rows of `cols` weights of type `ty`), laid out for this CPU's
    /// best kernels.
    pub fn new(
        ty: WeightType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        Self::new_for(Isa::active(), ty, rows, cols, data)
    }

    /// As [`new`](Self::new), for the kernels of `isa` (one of [`Isa::available`]).
    pub fn new_for(
        isa: Isa,
        ty: WeightType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, KernelError> {
        ty.check_row_len(cols)?;
        if !Isa::available().contains(&isa) {
            return Err(KernelError::Unsupported(format!(
                "this CPU has no {}",
                isa.name()
            )));
        }
        let row_bytes = ty.row_bytes(cols);
        // Checked: the unsafe kernels index `data` by these products, so a shape whose byte
        // count wraps must not pass as a small one.
        let needed = rows.checked_mul(row_bytes).filter(|_| rows > 0);
        if needed != Some(data.len()) {
            return Err(KernelError::Shape(format!(
                "{} matrix {rows}x{cols} needs {} bytes, got {}",
                ty.name(),
                needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        let storage = if packed::packed_on(isa, ty) {
            Storage::Packed(PackedMatrix::pack(ty, rows, cols, &data)?)
        } else {
            Storage::Ggml { row_bytes, data }
        };
        Ok(Self {
            ty,
            rows,
            cols,
            isa,
            storage,
        })
    }

    /// The rows of several matrices of one type, width and layout, stacked (e.g. the Q, K
    /// and V projections, which read the same input).
    pub fn stack(parts: &[&QMatrix]) -> Result<Self, KernelError> {
        let first = parts
            .first()
            .ok_or_else(|| KernelError::Shape("nothing to stack".into()))?;
        if parts
            .iter()
            .any(|p| p.ty != first.ty || p.cols != first.cols || p.isa != first.isa)
        {
            return Err(KernelError::Shape(
                "stacked matrices need one type, width and layout".into(),
            ));
        }
        // Checked: a part may be listed many times, and the kernels index the stacked bytes
        // by `rows * row_bytes`.
        let rows = parts
            .iter()
            .try_fold(0usize, |n, p| n.checked_add(p.rows))
            .ok_or_else(|| KernelError::Shape("stacked rows overflow usize".into()))?;
        let bytes = |p: &QMatrix| match &p.storage {
            Storage::Ggml { data, .. } => data.clone(),
            Storage::Packed(m) => m.data.clone(),
        };
        let data: Vec<u8> = parts.iter().flat_map(|p| bytes(p)).collect();
        let storage = match &first.storage {
            Storage::Ggml { row_bytes, .. } => Storage::Ggml {
                row_bytes: *row_bytes,
                data,
            },
            Storage::Packed(m) => Storage::Packed(PackedMatrix { data, ..m.clone() }),
        };
        Ok(Self {
            ty: first.ty,
            rows,
            cols: first.cols,
            isa: first.isa,
            storage,
        })
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The instruction set whose kernels multiply this matrix.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Row `j` in GGUF layout.
    pub fn ggml_row(&self, j: usize) -> Cow<'_, [u8]> {
        // Before the products below, which could wrap for a `j` far past the end.
        assert!(j < self.rows, "row {j} of a {}-row matrix", self.rows);
        match &self.storage {
            Storage::Ggml { row_bytes, data } => {
                Cow::Borrowed(&data[j * row_bytes..(j + 1) * row_bytes])
            }
            Storage::Packed(m) => Cow::Owned(m.ggml_row(j, self.cols)),
        }
    }

    /// Dequantized row `j`.
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        reference::dequantize_row(self.ty, &self.ggml_row(j), out)
    }

    /// `y (m x rows) = x (m x cols) W^T`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        self.check(x, m, y)?;
        // Taken out of the thread-local rather than borrowed: while this thread waits in the
        // parallel section it may run another matmul (work stealing), which then finds an
        // empty scratch instead of a borrowed one.
        let (mut acts, mut packed_acts) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        // `check` made `x.len() == m * cols` (checked), so this cannot fail; it leaves
        // `acts.rows == m`, `acts.k == cols` and every buffer sized for them, which the kernels
        // below read without bounds checks.
        acts.quantize_on(self.isa, self.ty.activation_format(), x, m, self.cols);
        match &self.storage {
            Storage::Ggml { row_bytes, data } => {
                let kernels = row_kernels(self.ty, self.isa);
                let acts = &acts;
                self.tiled(m, y, &|j0, j1, i, mr, out| {
                    let mut tile = [0f32; 4];
                    for j in j0..j1 {
                        // Bounds-checked slice: one weight row of `row_bytes` bytes.
                        let w = &data[j * row_bytes..(j + 1) * row_bytes];
                        // SAFETY: the kernels need (1) their CPU features: `QMatrix::new_for`
                        // refused an `isa` not in `Isa::available()`, and `row_kernels` gives
                        // the kernels of that `isa`; (2) `w` holding `acts.k / block_len`
                        // whole blocks: `w` is `row_bytes = ty.row_bytes(cols)` long and
                        // `acts.k == cols` (`quantize_on` above); (3) activation rows
                        // `i..i + mr` in `acts`, in `ty`'s activation format: `tiled` gives
                        // `1 <= mr <= 4` and `i + mr <= m == acts.rows`, and `quantize_on`
                        // above used `ty.activation_format()`.
                        unsafe { kernels[mr - 1](w, acts, i, &mut tile) };
                        for r in 0..mr {
                            // SAFETY: `i + r < m` and `j < rows` (`tiled`), so the index is
                            // below `m * rows`, which `QMatrix::check` proved (checked_mul)
                            // equal to `y.len()`; `tiled` gives this worker sole use of
                            // column `j`.
                            unsafe { *out.add((i + r) * self.rows + j) = tile[r] };
                        }
                    }
                })
            }
            Storage::Packed(p) => {
                packed_acts.pack(self.ty, &acts);
                let kernels = packed_kernels(self.isa, self.ty);
                let pa = &packed_acts;
                self.tiled(m, y, &|j0, j1, i, mr, out| {
                    // SAFETY: `packed_range` needs (1) its CPU features: `Storage::Packed`
                    // exists only where `packed::packed_on(isa, ty)`, `packed_kernels` gives
                    // that `isa`'s kernels, and `QMatrix::new_for` checked `isa` is in
                    // `Isa::available()`; (2) rows `j0..j1` of `row_stride` bytes in
                    // `p.data`: `j1 <= rows` (`tiled`) and `PackedMatrix::pack` made
                    // `data.len() == rows * row_stride` (checked_mul), each row holding
                    // `p.blocks` blocks; (3) `pa` packed from `cols`-wide rows, so
                    // `pa.nb == p.blocks`, with rows `i..i + mr` (`PackedActs::pack` sized
                    // its buffers for `acts.rows == m`; `tiled` gives `i + mr <= m`);
                    // (4) `out` valid for `(i + r) * rows + j` below `m * rows ==
                    // y.len()` (`QMatrix::check`, checked_mul), column `j` this worker's own.
                    unsafe { kernels[mr - 1](&p.data, p.row_stride, j0, j1, pa, i, out, self.rows) }
                })
            }
        }
        SCRATCH.with(|s| *s.borrow_mut() = (acts, packed_acts));
        Ok(())
    }

    /// The reference result: each output by [`reference::dot_row`], single-threaded.
    pub fn matmul_reference(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        self.check(x, m, y)?;
        let mut acts = QuantizedActs::default();
        acts.quantize_on(self.isa, self.ty.activation_format(), x, m, self.cols);
        for j in 0..self.rows {
            let w = self.ggml_row(j);
            for i in 0..m {
                y[i * self.rows + j] = reference::dot_row(self.ty, &w, &acts, i);
            }
        }
        Ok(())
    }

    /// The one check behind every unchecked access of a matmul: `x` is exactly `m x cols` and
    /// `y` exactly `m x rows`. Checked products: `m` comes from the caller, and a product that
    /// wrapped around to the slices' lengths would let the kernels run `m` rows past them.
    fn check(&self, x: &[f32], m: usize, y: &[f32]) -> Result<(), KernelError> {
        if m.checked_mul(self.cols) != Some(x.len()) || m.checked_mul(self.rows) != Some(y.len()) {
            return Err(KernelError::Shape(format!(
                "matmul of {m}x{} by {}x{} into {} values (x has {})",
                self.cols,
                self.rows,
                self.cols,
                y.len(),
                x.len()
            )));
        }
        Ok(())
    }

    /// Runs `tile(j0, j1, i, mr, out)` (weight rows `j0..j1` with activation rows `i..i+mr`,
    /// `mr` <= 4) over the whole product, runs of weight rows spread over the pool.
    ///
    /// What the callers' unchecked writes rely on: every call has `1 <= mr <= 4`,
    /// `i + mr <= m`, `j0 < j1 <= rows`, the runs `j0..j1` of different calls running at
    /// once are disjoint, and `out` is `y`'s pointer (`y.len() == m * rows` is the caller's
    /// check, [`check`](Self::check)).
    fn tiled(
        &self,
        m: usize,
        y: &mut [f32],
        tile: &(dyn Fn(usize, usize, usize, usize, *mut f32) + Sync),
    ) {
        let n = self.rows;
        let out = OutPtr(y.as_mut_ptr());
        #[allow(clippy::redundant_locals)] // captures the whole `OutPtr` (Sync), not its field
        let run = |j0: usize, j1: usize| {
            let out = out;
            for p0 in (0..m).step_by(PANEL_ROWS) {
                let p1 = (p0 + PANEL_ROWS).min(m);
                let mut i = p0;
                while i < p1 {
                    let mr = (p1 - i).min(4);
                    tile(j0, j1, i, mr, out.0);
                    i += mr;
                }
            }
        };
        let threads = rayon::current_num_threads();
        // Saturating: only a size estimate.
        if threads <= 1 || m.saturating_mul(n).saturating_mul(self.cols) < PARALLEL_MIN_WORK {
            run(0, n);
            return;
        }
        // A few runs per thread balance uneven progress; runs of at least 8 rows.
        let runs = (threads * 4).min(n.div_ceil(8)).max(1);
        let per = n.div_ceil(runs);
        crate::threads::parallel_for(runs, &|r| {
            let j0 = r * per;
            let j1 = ((r + 1) * per).min(n);
            if j0 < j1 {
                run(j0, j1);
            }
        });
    }
}
