//! Fused attention of query rows over a paged KV pool.
//!
//! Each query row attends the pool rows listed in its own slot list (its sequence's block
//! table, up to its own position: causality is the list's length), reading keys and values in
//! place: no gathered copy, no score matrix, no repeated KV heads. Work is one task per
//! (row, KV head): the `group` query heads sharing a KV head read each key and value once.
//! Softmax is online over tiles of keys (flash-attention style), with a vectorizable `exp`.
//!
//! Reference: FlashAttention's online softmax (Dao et al., 2022); vLLM's paged attention
//! (`csrc/attention`), read, not copied. [`attend_reference`] is the plain three-pass version.

use std::cell::RefCell;

use crate::dispatch::Isa;
use crate::math::{exp, sum8};
use crate::KernelError;

/// Head layout of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
    /// Values per query row. Plain products here: [`check`] proved that they do not overflow
    /// before any kernel uses them.
    fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Keys per online-softmax tile.
const TILE: usize = 32;

/// How many slots ahead the AVX2 score pass prefetches keys and values.
#[cfg(target_arch = "x86_64")]
const KV_PREFETCH_SLOTS: usize = 4;
/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// The one check behind every unchecked access of [`attend_on`] (and the indexing of
/// [`attend_reference`]). On success:
/// - `n_kv_heads > 0`, `head_dim > 0`, `n_heads` a multiple of `n_kv_heads`, and
///   `q_dim()`, `kv_dim()` do not overflow (checked_mul: the dims come from a model file);
/// - `q.len() == out.len() == rows.len() * q_dim()` (checked_mul), so query row `r`, head
///   `h` is `q[r * q_dim + h * head_dim..][..head_dim]`, inside `q` and `out`;
/// - `k_pool.len() == v_pool.len()` is whole rows of `kv_dim()`, and every slot of every
///   row is below their row count, so `slot * kv_dim + h * head_dim + head_dim` for a KV
///   head `h < n_kv_heads` is at most the pools' length.
fn check(
    dims: &AttentionDims,
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    rows: &[&[u32]],
    out: &[f32],
) -> Result<(), KernelError> {
    let d = dims;
    if d.n_kv_heads == 0 || d.head_dim == 0 || !d.n_heads.is_multiple_of(d.n_kv_heads) {
        return Err(KernelError::Shape(format!(
            "{} query heads over {} KV heads",
            d.n_heads, d.n_kv_heads
        )));
    }
    let (Some(q_dim), Some(kv_dim)) = (
        d.n_heads.checked_mul(d.head_dim),
        d.n_kv_heads.checked_mul(d.head_dim),
    ) else {
        return Err(KernelError::Shape(format!(
            "{} query and {} KV heads of {} values overflow usize",
            d.n_heads, d.n_kv_heads, d.head_dim
        )));
    };
    let q_len = rows.len().checked_mul(q_dim);
    if q_len != Some(q.len()) || out.len() != q.len() {
        return Err(KernelError::Shape(format!(
            "{} query rows need {} values, got {} (out {})",
            rows.len(),
            q_len.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
            q.len(),
            out.len()
        )));
    }
    if k_pool.len() != v_pool.len() || !k_pool.len().is_multiple_of(kv_dim) {
        return Err(KernelError::Shape(
            "K and V pools differ or are not whole rows".into(),
        ));
    }
    // Compared as usize: a pool of more than 2^32 rows must not wrap to a small count.
    let pool_rows = k_pool.len() / kv_dim;
    if rows
        .iter()
        .any(|r| r.is_empty() || r.iter().any(|&s| s as usize >= pool_rows))
    {
        return Err(KernelError::Shape(format!(
            "every row needs slots below {pool_rows}"
        )));
    }
    Ok(())
}

/// `out[r] = softmax(scale * q[r] K_r^T) V_r` per head, where `K_r`, `V_r` are the pool rows
/// `rows[r]` and query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
/// Consecutive rows sharing a prefix of at least 32 slots attend it together unless
/// `share_prefixes` is off (for measuring what sharing saves; the results are the same bits).
#[allow(clippy::too_many_arguments)]
pub fn attend(
    dims: AttentionDims,
    scale: f32,
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    rows: &[&[u32]],
    share_prefixes: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    attend_on(
        Isa::active(),
        dims,
        scale,
        q,
        k_pool,
        v_pool,
        rows,
        share_prefixes,
        out,
    )
}

/// Consecutive rows sharing at least this many leading slots attend them together.
const MIN_SHARED: usize = TILE;
/// Rows attended together at most (their state stays in L1; two groups of a width-16 batch
/// keep two threads busy).
const MAX_GROUP_ROWS: usize = 8;

/// Runs of consecutive rows that share a prefix of slots, as `(first, end, shared)`: a shared
/// prompt's keys and values are then read once per run rather than once per row. Rows of one
/// prefill chunk share all of the shorter row's slots; decode rows forked from one prompt
/// share the prompt's blocks.
fn row_groups(rows: &[&[u32]]) -> Vec<(usize, usize, usize)> {
    let mut groups = Vec::new();
    let mut r0 = 0;
    while r0 < rows.len() {
        let mut shared = rows[r0].len();
        let mut r1 = r0 + 1;
        while r1 < rows.len() && r1 - r0 < MAX_GROUP_ROWS {
            let (a, b) = (rows[r0], rows[r1]);
            let common = if a.as_ptr() == b.as_ptr() {
                a.len().min(b.len())
            } else {
                a.iter().zip(b).take_while(|(x, y)| x == y).count()
            };
            let c = common.min(shared);
            if c < MIN_SHARED {
                break;
            }
            shared = c;
            r1 += 1;
        }
        // Tiles start at multiples of TILE for every row, grouped or not, so that grouping
        // never changes a row's arithmetic.
        let shared = if r1 - r0 > 1 {
            shared / TILE * TILE
        } else {
            shared
        };
        groups.push((r0, r1, shared));
        r0 = r1;
    }
    groups
}

/// `out`'s pointer, shared by the tasks of one [`attend_on`] call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the `head_dim` runs of its own rows and query heads (tasks'
// (run of rows, KV head, first query head) triples are distinct and their head ranges do not
// overlap, see `attend_on`), and `attend_on` holds `out` mutably borrowed while they run.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: written only at disjoint indices.
unsafe impl Sync for OutPtr {}

/// As [`attend`], compiled for `isa` (AVX2 and above use 256-bit vectors and FMA).
#[allow(clippy::too_many_arguments)]
pub fn attend_on(
    isa: Isa,
    dims: AttentionDims,
    scale: f32,
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    rows: &[&[u32]],
    share_prefixes: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(&dims, q, k_pool, v_pool, rows, out)?;
    if rows.is_empty() {
        // Nothing to attend (and no tasks to divide the threads between).
        return Ok(());
    }
    let groups = if share_prefixes {
        row_groups(rows)
    } else {
        (0..rows.len()).map(|r| (r, r + 1, rows[r].len())).collect()
    };
    // One task per (run of rows, KV head); when that leaves threads idle (a single decode row
    // has as many tasks as KV heads), the query heads of a KV head are split between tasks.
    // Heads are independent, so a head's bits do not depend on the split.
    let threads = rayon::current_num_threads();
    let g = dims.group();
    let parts = (2 * threads)
        .div_ceil(groups.len() * dims.n_kv_heads)
        .clamp(1, g);
    let per_part = g.div_ceil(parts);
    let mut tasks: Vec<(usize, usize, usize)> =
        Vec::with_capacity(groups.len() * dims.n_kv_heads * parts);
    for gr in 0..groups.len() {
        for h in 0..dims.n_kv_heads {
            tasks.extend((0..g).step_by(per_part).map(|h0| (gr, h, h0)));
        }
    }
    let out = OutPtr(out.as_mut_ptr());
    let run = |&(gr, h, head0): &(usize, usize, usize)| {
        let (r0, r1, shared) = groups[gr];
        let heads = per_part.min(g - head0);
        let job = Job {
            d: dims,
            scale,
            q,
            k: k_pool,
            v: v_pool,
            rows: &rows[r0..r1],
            first_row: r0,
            shared,
            h,
            head0,
            heads,
            out,
        };
        // Taken, not borrowed, so that a re-entrant call on this thread cannot find it borrowed.
        let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let rg = (r1 - r0) * heads;
        s.resize(rg * (TILE + 2 + dims.head_dim), 0.0);
        #[cfg(target_arch = "x86_64")]
        if isa.at_most_best() >= Isa::Avx2 {
            // SAFETY: `job_avx2` needs AVX2 and FMA: `at_most_best` caps `isa` at
            // `Isa::best()`, and a set from `Isa::Avx2` up is in `Isa::available()` only
            // when both were detected. `job`'s own unchecked accesses rest on `check`.
            unsafe { job_avx2(&job, &mut s) };
        } else {
            job.run::<false>(&mut s);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = isa;
            job.run::<false>(&mut s);
        }
        SCRATCH.with(|cell| *cell.borrow_mut() = s);
    };
    // Saturating: only a size estimate (a slot list may be listed many times).
    let work = rows
        .iter()
        .fold(0usize, |n, r| n.saturating_add(r.len()))
        .saturating_mul(dims.q_dim())
        .saturating_mul(2);
    if work < PARALLEL_MIN_WORK || rayon::current_num_threads() <= 1 {
        tasks.iter().for_each(run);
    } else {
        crate::threads::parallel_for(tasks.len(), &|i| run(&tasks[i]));
    }
    Ok(())
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// # Safety
///
/// AVX2 and FMA are present, and `job` describes shapes that passed [`check`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn job_avx2(job: &Job, scratch: &mut [f32]) {
    job.run::<true>(scratch)
}

/// One task: query heads `head0..head0 + heads` of KV head `h`'s group, for a run of rows
/// sharing `shared` leading slots.
struct Job<'a> {
    d: AttentionDims,
    scale: f32,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    rows: &'a [&'a [u32]],
    first_row: usize,
    shared: usize,
    h: usize,
    head0: usize,
    heads: usize,
    out: OutPtr,
}

impl Job<'_> {
    /// Online softmax per (row, head): the shared keys with every row's heads at once, then
    /// each row's own keys; the running max, sum and weighted values carry over.
    #[inline(always)]
    fn run<const FMA: bool>(&self, scratch: &mut [f32]) {
        let (g, hd) = (self.heads, self.d.head_dim);
        let first_head = self.h * self.d.group() + self.head0;
        let rg = self.rows.len() * g;
        let (scores, rest) = scratch.split_at_mut(rg * TILE);
        let (max, rest) = rest.split_at_mut(rg);
        let (sum, acc) = rest.split_at_mut(rg);
        let acc = &mut acc[..rg * hd];
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        acc.fill(0.0);
        let mut state = State {
            scores,
            max,
            sum,
            acc,
        };
        self.keys::<FMA>(&self.rows[0][..self.shared], 0..self.rows.len(), &mut state);
        for (r, slots) in self.rows.iter().enumerate() {
            self.keys::<FMA>(&slots[self.shared..], r..r + 1, &mut state);
        }
        let qd = self.d.q_dim();
        for r in 0..self.rows.len() {
            for gi in 0..g {
                let i = r * g + gi;
                let inv = 1.0 / state.sum[i];
                // SAFETY: row `first_row + r < rows.len()` and query head
                // `first_head + gi < n_heads`, so the run ends at most at
                // `rows.len() * q_dim == out.len()` (`check`, checked_mul). No other task
                // writes it (`OutPtr`), and nothing else reads `out` while tasks run.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.out
                            .0
                            .add((self.first_row + r) * qd + (first_head + gi) * hd),
                        hd,
                    )
                };
                for (o, a) in o.iter_mut().zip(&state.acc[i * hd..(i + 1) * hd]) {
                    *o = a * inv;
                }
            }
        }
    }

    /// Asks the cache for this job's key and value rows of `slot` (f32, `head_dim` each).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn prefetch_kv(&self, slot: u32) {
        let (hd, at) = (
            self.d.head_dim,
            slot as usize * self.d.kv_dim() + self.h * self.d.head_dim,
        );
        crate::x86::prefetch_bytes(self.k.as_ptr().wrapping_add(at).cast(), 4 * hd);
        crate::x86::prefetch_bytes(self.v.as_ptr().wrapping_add(at).cast(), 4 * hd);
    }

    /// The scores of heads `heads` (indices into this job's (row, head) state) for one tile,
    /// with AVX2 when the path and head size allow; false if it left them to the caller.
    #[inline(always)]
    fn scores_avx2<const FMA: bool>(
        &self,
        tile: &[u32],
        heads: std::ops::Range<usize>,
        st: &mut State,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if FMA && self.d.head_dim.is_multiple_of(8) {
            let (g, hd, kvd, qd) = (self.heads, self.d.head_dim, self.d.kv_dim(), self.d.q_dim());
            let first_head = self.h * self.d.group() + self.head0;
            // Eight heads per pass: one horizontal-sum tree serves all eight scores. A
            // short last pass repeats a head and drops the extra results.
            let query = |i: usize| {
                let (r, gi) = (i / g, i % g);
                &self.q[(self.first_row + r) * qd + (first_head + gi) * hd..][..hd]
            };
            // `dots::<4>` sums each head exactly as `dots::<8>` does.
            let mut i0 = heads.start;
            while i0 < heads.end {
                let live = (heads.end - i0).min(8);
                let wide = live > 4;
                let qs: [&[f32]; 8] = std::array::from_fn(|l| query((i0 + l).min(heads.end - 1)));
                for (j, &slot) in tile.iter().enumerate() {
                    if i0 == heads.start {
                        // Keys and values come through the slot list, where the hardware
                        // prefetcher cannot follow: ask for a later slot's rows now (the
                        // values are read after this tile's softmax).
                        if let Some(&ahead) = tile.get(j + KV_PREFETCH_SLOTS) {
                            self.prefetch_kv(ahead);
                        }
                    }
                    let key = &self.k[slot as usize * kvd + self.h * hd..][..hd];
                    // SAFETY: `FMA` is set only by `job_avx2`, whose caller checked AVX2 and
                    // FMA (`attend_on`). `dots` loads 8 floats at a time up to `key.len()`
                    // from `key` and each `qs[..N]`: all are bounds-checked `[..hd]` slices
                    // and `hd` is a multiple of 8 (tested just above).
                    let dots = unsafe {
                        if wide {
                            avx2::dots::<8>(&qs, key)
                        } else {
                            avx2::dots::<4>(&qs, key)
                        }
                    };
                    for (l, &d) in dots[..live].iter().enumerate() {
                        st.scores[(i0 + l) * TILE + j] = d * self.scale;
                    }
                }
                i0 += live;
            }
            return true;
        }
        let _ = (tile, heads, st);
        false
    }

    /// Attends `slots` with rows `active` (indices into this job's rows), a tile of keys at a
    /// time: each key is read once for every active head, and each head's weighted values
    /// accumulate in registers (32 dimensions at a time on AVX2) across the tile.
    #[inline(always)]
    fn keys<const FMA: bool>(&self, slots: &[u32], active: std::ops::Range<usize>, st: &mut State) {
        let (g, hd, kvd, qd) = (self.heads, self.d.head_dim, self.d.kv_dim(), self.d.q_dim());
        let first_head = self.h * self.d.group() + self.head0;
        let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { c + a * b };
        for (t, tile) in slots.chunks(TILE).enumerate() {
            #[cfg(target_arch = "x86_64")]
            if FMA {
                // The next tile's first slots, which the score pass's look-ahead within a
                // tile does not reach.
                for &ahead in slots.iter().skip((t + 1) * TILE).take(KV_PREFETCH_SLOTS) {
                    self.prefetch_kv(ahead);
                }
            }
            let n = tile.len();
            // Each score by the same arithmetic however many rows share the tile: a sequence's
            // result never depends on what it is batched with.
            let heads = active.start * g..active.end * g;
            if !self.scores_avx2::<FMA>(tile, heads.clone(), st) {
                for (j, &slot) in tile.iter().enumerate() {
                    let key = &self.k[slot as usize * kvd + self.h * hd..][..hd];
                    for i in heads.clone() {
                        let (r, gi) = (i / g, i % g);
                        let q = &self.q[(self.first_row + r) * qd + (first_head + gi) * hd..][..hd];
                        st.scores[i * TILE + j] = dot16(q, key) * self.scale;
                    }
                }
            }
            for i in active.start * g..active.end * g {
                let s = &mut st.scores[i * TILE..i * TILE + n];
                let tile_max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let new_max = st.max[i].max(tile_max);
                let correction = exp(st.max[i] - new_max);
                st.max[i] = new_max;
                for x in s.iter_mut() {
                    *x = exp(*x - new_max);
                }
                st.sum[i] = st.sum[i] * correction + sum8(s);
                let p = &st.scores[i * TILE..i * TILE + n];
                #[cfg(target_arch = "x86_64")]
                if FMA && hd % 8 == 0 {
                    // SAFETY: `FMA` is set only by `job_avx2`, whose caller checked AVX2 and
                    // FMA (`attend_on`). `weighted_values` reads
                    // `v[slot * kvd + h * hd..][..hd]` for each slot of `tile`: `check` proved
                    // every slot below the pool's row count and `h < n_kv_heads`, so each
                    // run ends by `v.len()`; it reads `p[..tile.len()]` (`p` is `n ==
                    // tile.len()` long) and `acc` is a bounds-checked `hd`-slice with `hd` a
                    // multiple of 8 (tested just above).
                    unsafe {
                        avx2::weighted_values(
                            &mut st.acc[i * hd..(i + 1) * hd],
                            correction,
                            p,
                            self.v,
                            tile,
                            self.h * hd,
                            kvd,
                        )
                    };
                    continue;
                }
                for c in (0..hd).step_by(16) {
                    let w = (hd - c).min(16);
                    let acc = &mut st.acc[i * hd + c..i * hd + c + w];
                    let mut a = [0f32; 16];
                    for (a, o) in a.iter_mut().zip(acc.iter()) {
                        *a = o * correction;
                    }
                    for (j, &slot) in tile.iter().enumerate() {
                        let value = &self.v[slot as usize * kvd + self.h * hd + c..][..w];
                        if w == 16 {
                            for l in 0..16 {
                                a[l] = fma(p[j], value[l], a[l]);
                            }
                        } else {
                            for l in 0..w {
                                a[l] = fma(p[j], value[l], a[l]);
                            }
                        }
                    }
                    acc.copy_from_slice(&a[..w]);
                }
            }
        }
    }
}

/// The two inner loops with AVX2 + FMA intrinsics (head dimensions a multiple of 8).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `N` (4 or 8) dot products of `qs[..N]` with one vector `k` (lengths a multiple of 8):
    /// one accumulator per query, then one horizontal-sum tree for all of them. Each head's
    /// sum is ((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7)) over its accumulator's lanes for either
    /// `N`, so a score has the same bits whichever is used.
    ///
    /// # Safety
    ///
    /// AVX2 and FMA are present; `k.len()` is a multiple of 8 and each of `qs[..N]` is at
    /// least `k.len()` long.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots<const N: usize>(qs: &[&[f32]; 8], k: &[f32]) -> [f32; 8] {
        let n = k.len();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < n {
            // SAFETY: `i + 8 <= n` (`n` a multiple of 8, this function's contract), and
            // `n <= qs[h].len()` (contract), so each load of 8 stays inside its slice.
            let kv = _mm256_loadu_ps(k.as_ptr().add(i));
            for h in 0..N {
                // SAFETY: as above.
                acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(qs[h].as_ptr().add(i)), kv, acc[h]);
            }
            i += 8;
        }
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let mut out = [0f32; 8];
        if N > 4 {
            let u1 = _mm256_hadd_ps(
                _mm256_hadd_ps(acc[4], acc[5]),
                _mm256_hadd_ps(acc[6], acc[7]),
            );
            let v = _mm256_add_ps(
                _mm256_permute2f128_ps(u0, u1, 0x20),
                _mm256_permute2f128_ps(u0, u1, 0x31),
            );
            // SAFETY: 8 floats into the 8 of `out`.
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        } else {
            // SAFETY: 4 floats into the first 4 of `out`.
            _mm_storeu_ps(
                out.as_mut_ptr(),
                _mm_add_ps(_mm256_castps256_ps128(u0), _mm256_extractf128_ps(u0, 1)),
            );
        }
        out
    }

    /// `acc = acc * correction + sum_j p[j] * V[slots[j]][offset..offset + acc.len()]`, 32
    /// dimensions at a time in four registers.
    ///
    /// # Safety
    ///
    /// AVX2 and FMA are present; `acc.len()` is a multiple of 8 (else the loop never ends);
    /// `p.len() >= slots.len()`; and `slot * stride + offset + acc.len() <= v.len()` for
    /// every slot.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_values(
        acc: &mut [f32],
        correction: f32,
        p: &[f32],
        v: &[f32],
        slots: &[u32],
        offset: usize,
        stride: usize,
    ) {
        let hd = acc.len();
        let c = _mm256_set1_ps(correction);
        let mut d0 = 0;
        while d0 < hd {
            let regs = ((hd - d0) / 8).min(4);
            let mut a = [_mm256_setzero_ps(); 4];
            for l in 0..regs {
                // SAFETY: `d0 + 8 * regs <= hd == acc.len()` (`regs` is how many whole
                // vectors are left, and `hd` a multiple of 8 by contract).
                a[l] = _mm256_mul_ps(_mm256_loadu_ps(acc.as_ptr().add(d0 + 8 * l)), c);
            }
            for (j, &slot) in slots.iter().enumerate() {
                // SAFETY: `j < slots.len() <= p.len()` (contract).
                let pj = _mm256_set1_ps(*p.get_unchecked(j));
                // SAFETY: the loads below read `vp[..8 * regs]`, which ends by
                // `slot * stride + offset + hd <= v.len()` (contract).
                let vp = v.as_ptr().add(slot as usize * stride + offset + d0);
                if regs == 4 {
                    a[0] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp), a[0]);
                    a[1] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp.add(8)), a[1]);
                    a[2] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp.add(16)), a[2]);
                    a[3] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp.add(24)), a[3]);
                } else {
                    for l in 0..regs {
                        a[l] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vp.add(8 * l)), a[l]);
                    }
                }
            }
            for l in 0..regs {
                // SAFETY: as the loads from `acc` above.
                _mm256_storeu_ps(acc.as_mut_ptr().add(d0 + 8 * l), a[l]);
            }
            d0 += 8 * regs;
        }
    }
}

/// Dot product in sixteen independent lanes (the portable path; vectorizable).
#[inline(always)]
fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

struct State<'a> {
    scores: &'a mut [f32],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    acc: &'a mut [f32],
}

/// Plain reference: scores, softmax with `f32::exp`, weighted sum, one head at a time.
pub fn attend_reference(
    dims: AttentionDims,
    scale: f32,
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    rows: &[&[u32]],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(&dims, q, k_pool, v_pool, rows, out)?;
    let (hd, kvd, g) = (dims.head_dim, dims.kv_dim(), dims.group());
    for (r, slots) in rows.iter().enumerate() {
        for head in 0..dims.n_heads {
            let kvh = head / g;
            let qv = &q[r * dims.q_dim() + head * hd..][..hd];
            let scores: Vec<f32> = slots
                .iter()
                .map(|&s| {
                    qv.iter()
                        .zip(&k_pool[s as usize * kvd + kvh * hd..][..hd])
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let m = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let o = &mut out[r * dims.q_dim() + head * hd..][..hd];
            o.fill(0.0);
            for (&p, &s) in e.iter().zip(slots.iter()) {
                for (o, &x) in o
                    .iter_mut()
                    .zip(&v_pool[s as usize * kvd + kvh * hd..][..hd])
                {
                    *o += p / z * x;
                }
            }
        }
    }
    Ok(())
}
