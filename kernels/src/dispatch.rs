//! Choosing the kernels at run time from the CPU's features, so a plain build runs the fast
//! path on any x86-64 (no `target-cpu` flag needed) and falls back to the reference elsewhere.

use std::sync::OnceLock;

use crate::activations::QuantizedActs;
use crate::formats::WeightType;
use crate::packed::PackedActs;
use crate::reference;

/// An instruction set the kernels are compiled for, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The reference code, whatever the compiler makes of it.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 with AVX-VNNI's `vpdpbusd` (Alder Lake, Sapphire Rapids and later).
    AvxVnni,
    /// AVX-512 (F, BW, VL, DQ) with VNNI (Ice Lake, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::AvxVnni => "avx-vnni",
            Self::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Every instruction set this CPU runs, slowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 {
                v.push(Isa::Avx2);
                if has!("avxvnni") {
                    v.push(Isa::AvxVnni);
                }
                if has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512vl")
                    && has!("avx512dq")
                    && has!("avx512vnni")
                {
                    v.push(Isa::Avx512Vnni);
                }
            }
        }
        v
    }

    /// The best available, capped by `TTC_KERNELS` (portable, avx2, avx-vnni, avx512-vnni)
    /// when set: for measuring one kernel against another.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let cap = std::env::var("TTC_KERNELS")
                .ok()
                .and_then(|n| Self::from_name(&n))
                .unwrap_or(Isa::Avx512Vnni);
            Self::available()
                .into_iter()
                .filter(|i| *i <= cap)
                .max()
                .expect("portable is always available")
        })
    }

    /// The fastest set this CPU runs, whatever `TTC_KERNELS` says.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Self::available()
                .into_iter()
                .max()
                .expect("portable is always available")
        })
    }

    /// `self`, or [`best`](Self::best) where this CPU lacks `self`'s wider instructions: what a
    /// public `*_on(isa, ..)` entry point runs, so that no caller reaches an instruction the
    /// CPU does not have. (Those entry points need only AVX2 and FMA at or above
    /// [`Isa::Avx2`], which any available set from `Avx2` up implies.)
    pub fn at_most_best(self) -> Isa {
        self.min(Self::best())
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni]
            .into_iter()
            .find(|i| i.name() == name)
    }
}

/// Dot products of one weight row with activation rows `i0..i0 + MR`, into `out[..MR]`.
///
/// Unsafe to call: the SIMD kernels read without bounds checks and need their CPU features;
/// the contract is written on `x86::row_kernels!` (and established by `QMatrix::new_for`,
/// `QMatrix::check` and `QMatrix::tiled`).
pub(crate) type RowsKernel = unsafe fn(&[u8], &QuantizedActs, usize, &mut [f32; 4]);

/// The reference as a kernel: the portable fallback. `unsafe` only to fit [`RowsKernel`]: its
/// body is safe, bounds-checked code.
unsafe fn portable<const T: u8, const MR: usize>(
    w: &[u8],
    a: &QuantizedActs,
    i0: usize,
    out: &mut [f32; 4],
) {
    let t = WeightType::ALL[T as usize];
    for r in 0..MR {
        out[r] = reference::dot_row(t, w, a, i0 + r);
    }
}

macro_rules! by_rows {
    ($f:ident $(:: $p:ident)*, $c:expr) => {
        [$f$(::$p)*::<{ $c }, 1> as RowsKernel, $f$(::$p)*::<{ $c }, 2>, $f$(::$p)*::<{ $c }, 3>, $f$(::$p)*::<{ $c }, 4>]
    };
}

/// The kernels for 1, 2, 3 and 4 rows of `t` on `isa` (which must be available: calling the
/// kernels is where that matters, and `QMatrix::new_for` checks it).
pub(crate) fn row_kernels(t: WeightType, isa: Isa) -> [RowsKernel; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::x86::{avx2, avx512_kquants, avx512vl, avxvnni};
        macro_rules! family {
            ($m:ident) => {
                match t {
                    WeightType::Q4_0 => [
                        $m::q4_0::<1> as RowsKernel,
                        $m::q4_0::<2>,
                        $m::q4_0::<3>,
                        $m::q4_0::<4>,
                    ],
                    WeightType::Q4_1 => [
                        $m::q4_1::<1> as RowsKernel,
                        $m::q4_1::<2>,
                        $m::q4_1::<3>,
                        $m::q4_1::<4>,
                    ],
                    WeightType::Q8_0 => [
                        $m::q8_0::<1> as RowsKernel,
                        $m::q8_0::<2>,
                        $m::q8_0::<3>,
                        $m::q8_0::<4>,
                    ],
                    WeightType::Q4K => [
                        $m::q4_k::<1> as RowsKernel,
                        $m::q4_k::<2>,
                        $m::q4_k::<3>,
                        $m::q4_k::<4>,
                    ],
                    WeightType::Q6K => [
                        $m::q6_k::<1> as RowsKernel,
                        $m::q6_k::<2>,
                        $m::q6_k::<3>,
                        $m::q6_k::<4>,
                    ],
                }
            };
        }
        match isa {
            Isa::Portable => {}
            Isa::Avx2 => return family!(avx2),
            Isa::AvxVnni => return family!(avxvnni),
            // 32-block formats are packed for this ISA (`packed_kernels`); the K formats
            // have 512-bit kernels over their own layout.
            Isa::Avx512Vnni => {
                return match t {
                    WeightType::Q4K => [
                        avx512_kquants::q4_k::<1> as RowsKernel,
                        avx512_kquants::q4_k::<2>,
                        avx512_kquants::q4_k::<3>,
                        avx512_kquants::q4_k::<4>,
                    ],
                    WeightType::Q6K => [
                        avx512_kquants::q6_k::<1> as RowsKernel,
                        avx512_kquants::q6_k::<2>,
                        avx512_kquants::q6_k::<3>,
                        avx512_kquants::q6_k::<4>,
                    ],
                    _ => family!(avx512vl),
                }
            }
        }
    }
    let _ = isa;
    match t {
        WeightType::Q4_0 => by_rows!(portable, 0),
        WeightType::Q4_1 => by_rows!(portable, 1),
        WeightType::Q8_0 => by_rows!(portable, 2),
        WeightType::Q4K => by_rows!(portable, 3),
        WeightType::Q6K => by_rows!(portable, 4),
    }
}

/// Dot products of weight rows `j0..j1` (each `stride` bytes of `data`) with activation rows
/// `i0..i0 + MR`, written to `out[(i0 + r) * n + j]`. The contract is
/// `x86::avx512::packed_range`'s.
pub(crate) type RangeKernel<A> = unsafe fn(&[u8], usize, usize, usize, &A, usize, *mut f32, usize);

/// The kernels over packed rows of a 32-block format for `isa` (one that
/// `packed::packed_on` packs for).
pub(crate) fn packed_kernels(isa: Isa, t: WeightType) -> [RangeKernel<PackedActs>; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::x86::{avx2_packed, avx512};
        macro_rules! ranges {
            ($m:ident, $c:expr) => {
                [
                    $m::packed_range::<{ $c }, 1> as RangeKernel<PackedActs>,
                    $m::packed_range::<{ $c }, 2>,
                    $m::packed_range::<{ $c }, 3>,
                    $m::packed_range::<{ $c }, 4>,
                ]
            };
        }
        match (isa, avx512::type_code(t)) {
            (Isa::Avx2, avx512::Q4_0) => ranges!(avx2_packed, avx512::Q4_0),
            (Isa::Avx2, avx512::Q4_1) => ranges!(avx2_packed, avx512::Q4_1),
            (Isa::Avx2, _) => unreachable!("{} is not packed for AVX2", t.name()),
            (_, avx512::Q4_0) => ranges!(avx512, avx512::Q4_0),
            (_, avx512::Q4_1) => ranges!(avx512, avx512::Q4_1),
            _ => ranges!(avx512, avx512::Q8_0),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "packed layouts exist on x86-64 only ({}, {})",
        isa.name(),
        t.name()
    )
}
