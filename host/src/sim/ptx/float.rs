//! Floating-point semantics of PTX instructions: rounding modes, flush-to-zero, saturation,
//! NaN rules, conversions.
//!
//! Round-to-nearest arithmetic runs on the host's own IEEE f32/f64 (the common case, fast): f16
//! and bf16 +, -, *, / and sqrt go through f64 and are rounded once more, which is exact because
//! f64 has more than twice their precision plus two bits. Fused multiply-add of halves, and every
//! directed rounding (.rz, .rm, .rp), go through `rustc_apfloat` (LLVM's APFloat in Rust, the
//! well-kept software float: each operation rounded once, in the mode asked for).

use super::parse::{Bin, Mods, Rnd, Ty, Un, F8};
use rustc_apfloat::ieee::{BFloat, Double, Float8E4M3FN, Float8E5M2, Half, Single};
use rustc_apfloat::{Float, FloatConvert, Round};

pub(crate) fn mask(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

pub(crate) fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

pub(crate) fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

/// A float operand as f64 (exact for f16/bf16/f32).
pub(crate) fn to_f64(v: u64, ty: Ty) -> f64 {
    match ty {
        Ty::F64 => f64::from_bits(v),
        Ty::F32 => f32_of(v) as f64,
        Ty::F16 => half::f16::from_bits(v as u16).to_f64(),
        Ty::Bf16 => half::bf16::from_bits(v as u16).to_f64(),
        _ => v as f64,
    }
}

/// An f64 result stored as `ty`, rounded to nearest.
pub(crate) fn from_f64(x: f64, ty: Ty) -> u64 {
    match ty {
        Ty::F64 => x.to_bits(),
        Ty::F32 => (x as f32).to_bits() as u64,
        Ty::F16 => half::f16::from_f64(x).to_bits() as u64,
        Ty::Bf16 => half::bf16::from_f64(x).to_bits() as u64,
        _ => x as u64,
    }
}

fn round_of(r: Rnd) -> Round {
    match r {
        Rnd::None | Rnd::Near => Round::NearestTiesToEven,
        Rnd::Zero => Round::TowardZero,
        Rnd::Down => Round::TowardNegative,
        Rnd::Up => Round::TowardPositive,
    }
}

fn directed(r: Rnd) -> bool {
    !matches!(r, Rnd::None | Rnd::Near)
}

/// (exponent bits, mantissa bits) of a float type.
fn layout(ty: Ty) -> (u32, u32) {
    match ty {
        Ty::F16 => (5, 10),
        Ty::Bf16 => (8, 7),
        Ty::F32 => (8, 23),
        _ => (11, 52),
    }
}

pub(crate) fn is_nan(v: u64, ty: Ty) -> bool {
    let (e, m) = layout(ty);
    (v >> m) & ((1 << e) - 1) == (1 << e) - 1 && mask(v, m) != 0
}

/// A subnormal of its format (exponent field 0, not a zero).
pub(crate) fn is_subnormal(v: u64, ty: Ty) -> bool {
    let (e, m) = layout(ty);
    (v >> m) & ((1 << e) - 1) == 0 && mask(v, m) != 0
}

fn sign_bit(ty: Ty) -> u64 {
    1 << (ty.bits() - 1)
}

/// .ftz: a subnormal input or result of f32 (and f16) arithmetic becomes a zero of its sign.
pub(crate) fn flush(v: u64, ty: Ty, ftz: bool) -> u64 {
    let (_, m) = layout(ty);
    if ftz && matches!(ty, Ty::F32 | Ty::F16) && (v >> m) & ((1 << layout(ty).0) - 1) == 0 {
        v & sign_bit(ty)
    } else {
        v
    }
}

/// .sat: clamps to [0.0, 1.0]; NaN gives +0.0.
fn saturate(v: u64, ty: Ty) -> u64 {
    let x = to_f64(v, ty);
    if x.is_nan() || x <= 0.0 {
        0
    } else if x > 1.0 {
        from_f64(1.0, ty)
    } else {
        v
    }
}

/// The result as .ftz and .sat leave it.
fn finish(v: u64, ty: Ty, m: Mods) -> u64 {
    let v = flush(v, ty, m.ftz);
    // .relu: negative results become +0 (a NaN stays NaN).
    let v = if m.relu && !is_nan(v, ty) && v & sign_bit(ty) != 0 { 0 } else { v };
    if m.sat {
        saturate(v, ty)
    } else {
        v
    }
}

macro_rules! soft {
    ($ty:expr, |$x:ident: $t:ident| $body:expr) => {
        match $ty {
            Ty::F16 => {
                #[allow(dead_code)]
                type $t = Half;
                let $x = |v: u64| Half::from_bits(v as u128);
                $body.to_bits() as u64
            }
            Ty::Bf16 => {
                #[allow(dead_code)]
                type $t = BFloat;
                let $x = |v: u64| BFloat::from_bits(v as u128);
                $body.to_bits() as u64
            }
            Ty::F32 => {
                #[allow(dead_code)]
                type $t = Single;
                let $x = |v: u64| Single::from_bits(v as u128);
                $body.to_bits() as u64
            }
            _ => {
                #[allow(dead_code)]
                type $t = Double;
                let $x = |v: u64| Double::from_bits(v as u128);
                $body.to_bits() as u64
            }
        }
    };
}

/// add, sub, mul, div, min, max of floats. None for an operation floats do not have.
pub(crate) fn bin(op: Bin, ty: Ty, m: Mods, a: u64, b: u64) -> Option<u64> {
    let (a, b) = (flush(a, ty, m.ftz), flush(b, ty, m.ftz));
    let r = match op {
        Bin::Min | Bin::Max => {
            // A NaN operand is ignored (both NaN: NaN); with .NaN any NaN operand is the result.
            let (na, nb) = (is_nan(a, ty), is_nan(b, ty));
            if na || nb {
                if m.nan || (na && nb) {
                    canonical_nan(ty)
                } else if na {
                    b
                } else {
                    a
                }
            } else {
                let (x, y) = (to_f64(a, ty), to_f64(b, ty));
                // -0 orders below +0, as IEEE 754-2019 minimum/maximum do.
                let a_first = if x == y { (a & sign_bit(ty) != 0) == (op == Bin::Min) } else { (x < y) == (op == Bin::Min) };
                if a_first {
                    a
                } else {
                    b
                }
            }
        }
        Bin::Add | Bin::Sub | Bin::MulLo | Bin::Div if directed(m.rnd) => {
            let rnd = round_of(m.rnd);
            soft!(ty, |f: F| match op {
                Bin::Add => f(a).add_r(f(b), rnd).value,
                Bin::Sub => f(a).sub_r(f(b), rnd).value,
                Bin::MulLo => f(a).mul_r(f(b), rnd).value,
                _ => f(a).div_r(f(b), rnd).value,
            })
        }
        Bin::Add | Bin::Sub | Bin::MulLo | Bin::Div if ty == Ty::F32 => {
            let (x, y) = (f32_of(a), f32_of(b));
            let r = match op {
                Bin::Add => x + y,
                Bin::Sub => x - y,
                Bin::MulLo => x * y,
                _ => x / y,
            };
            r.to_bits() as u64
        }
        Bin::Add | Bin::Sub | Bin::MulLo | Bin::Div => {
            let (x, y) = (to_f64(a, ty), to_f64(b, ty));
            let r = match op {
                Bin::Add => x + y,
                Bin::Sub => x - y,
                Bin::MulLo => x * y,
                _ => x / y,
            };
            from_f64(r, ty)
        }
        _ => return None,
    };
    Some(finish(r, ty, m))
}

/// fma / mad.rn: a * b + c rounded once.
pub(crate) fn fma(ty: Ty, m: Mods, a: u64, b: u64, c: u64) -> u64 {
    let (a, b, c) = (flush(a, ty, m.ftz), flush(b, ty, m.ftz), flush(c, ty, m.ftz));
    // A contracted mul and sub (parse::contract_mul_add): a sign flip, exact.
    let (a, c) = (if m.neg_a { a ^ sign_bit(ty) } else { a }, if m.neg_c { c ^ sign_bit(ty) } else { c });
    let r = match ty {
        Ty::F32 if !directed(m.rnd) => f32_of(a).mul_add(f32_of(b), f32_of(c)).to_bits() as u64,
        Ty::F64 if !directed(m.rnd) => f64::from_bits(a).mul_add(f64::from_bits(b), f64::from_bits(c)).to_bits(),
        _ => {
            let rnd = round_of(m.rnd);
            soft!(ty, |f: F| f(a).mul_add_r(f(b), f(c), rnd).value)
        }
    };
    finish(r, ty, m)
}

/// The NaN NVIDIA GPUs produce (all mantissa bits set, sign clear).
pub(crate) fn canonical_nan(ty: Ty) -> u64 {
    mask(u64::MAX, ty.bits() - 1)
}

/// Unary float instructions. None for one floats do not have.
pub(crate) fn unary(op: Un, ty: Ty, m: Mods, a: u64) -> Option<u64> {
    let sign = sign_bit(ty);
    // Sign-bit operations: exact, NaN payloads included.
    match op {
        Un::Neg => return Some(finish(flush(a, ty, m.ftz) ^ sign, ty, m)),
        Un::Abs => return Some(finish(flush(a, ty, m.ftz) & !sign, ty, m)),
        _ => {}
    }
    let a = flush(a, ty, m.ftz);
    let r = match op {
        Un::Sqrt => sqrt(ty, m.rnd, a),
        Un::Rcp if directed(m.rnd) || ty != Ty::F32 => {
            let rnd = round_of(m.rnd);
            soft!(ty, |f: F| F::from_u128_r(1, rnd).value.div_r(f(a), rnd).value)
        }
        _ if ty == Ty::F32 => {
            let v = f32_of(a);
            let r = match op {
                Un::Rsqrt => 1.0 / v.sqrt(),
                Un::Rcp => 1.0 / v,
                Un::Sin => v.sin(),
                Un::Cos => v.cos(),
                Un::Ex2 => v.exp2(),
                Un::Lg2 => v.log2(),
                Un::Tanh => v.tanh(),
                _ => return None,
            };
            r.to_bits() as u64
        }
        _ => {
            let f = to_f64(a, ty);
            let r = match op {
                Un::Rsqrt => 1.0 / f.sqrt(),
                Un::Sin => f.sin(),
                Un::Cos => f.cos(),
                Un::Ex2 => f.exp2(),
                Un::Lg2 => f.log2(),
                Un::Tanh => f.tanh(),
                _ => return None,
            };
            from_f64(r, ty)
        }
    };
    Some(finish(r, ty, m))
}

/// sqrt in any rounding mode: the host's correctly rounded square root (in f64 for the narrow
/// types, exact by the double-precision argument above), then for a directed mode one step
/// toward the asked direction if the root was inexact on the wrong side. Exactness is decided
/// on an input scaled by an even power of two into [1, 4), where r*r - x is exact in fma.
fn sqrt(ty: Ty, rnd: Rnd, a: u64) -> u64 {
    let x = to_f64(a, ty);
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return from_f64(x.sqrt(), ty); // NaN, +-0, +inf, negatives (NaN)
    }
    let r = match ty {
        Ty::F64 => x.sqrt().to_bits(),
        _ => from_f64(x.sqrt(), ty),
    };
    if !directed(rnd) {
        return r;
    }
    let k = (x.log2().floor() as i32).div_euclid(2);
    let scale = |v: f64, e: i32| v * 2f64.powi(e);
    let xs = scale(scale(x, -k), -k); // x / 4^k in [1, 4): exact, a power-of-two scaling
    let rs = scale(to_f64(r, ty), -k); // sqrt(x) / 2^k
    let residual = rs.mul_add(rs, -xs); // r^2 - x, exact sign
    let step = |v: u64, up: bool| -> u64 {
        // The next float of `ty` above (up) or below a positive finite v.
        if up {
            v + 1
        } else {
            v - 1
        }
    };
    match (residual.partial_cmp(&0.0), rnd) {
        (Some(std::cmp::Ordering::Greater), Rnd::Zero | Rnd::Down) => step(r, false),
        (Some(std::cmp::Ordering::Less), Rnd::Up) => step(r, true),
        _ => r,
    }
}

/// Integer rounding of an f64 (exact for every mode).
pub(crate) fn round_int(x: f64, r: Rnd) -> f64 {
    match r {
        Rnd::Near => x.round_ties_even(),
        Rnd::Zero | Rnd::None => x.trunc(),
        Rnd::Down => x.floor(),
        Rnd::Up => x.ceil(),
    }
}

pub(crate) fn int_range(t: Ty) -> (i128, i128) {
    let bits = t.bits();
    if t.signed() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

/// cvt between any two of the integer and float types.
pub(crate) fn convert(dty: Ty, sty: Ty, m: Mods, v: u64) -> u64 {
    let dbits = dty.bits();
    match (dty.float(), sty.float()) {
        (false, false) => {
            let x: i128 = if sty.signed() { sext(v, sty.bits()) as i128 } else { mask(v, sty.bits()) as i128 };
            if m.sat {
                let (lo, hi) = int_range(dty);
                mask(x.clamp(lo, hi) as u64, dbits)
            } else {
                mask(x as u64, dbits)
            }
        }
        (false, true) => {
            let x = to_f64(flush(v, sty, m.ftz), sty);
            if x.is_nan() {
                return 0;
            }
            // Float-to-integer conversions saturate in PTX.
            let (lo, hi) = int_range(dty);
            let r = round_int(x, m.rnd);
            let i = if r <= lo as f64 { lo } else if r >= hi as f64 { hi } else { r as i128 };
            mask(i as u64, dbits)
        }
        (true, false) if !directed(m.rnd) => {
            // Round to nearest: the host's conversions, each rounded once (an integer below 2^53
            // is exact as an f64, from which from_f64 rounds once).
            let x: i128 = if sty.signed() { sext(v, sty.bits()) as i128 } else { mask(v, sty.bits()) as i128 };
            let r = match dty {
                Ty::F32 => (if sty.signed() { x as i64 as f32 } else { x as u64 as f32 }).to_bits() as u64,
                Ty::F64 => (if sty.signed() { x as i64 as f64 } else { x as u64 as f64 }).to_bits(),
                _ if x.unsigned_abs() < 1 << 53 => from_f64(x as f64, dty),
                _ => return convert_soft(dty, sty, m, v),
            };
            finish(r, dty, m)
        }
        (true, false) => convert_soft(dty, sty, m, v),
        (true, true) if dty != sty && !directed(m.rnd) && !is_nan(flush(v, sty, m.ftz), sty) => {
            // Round to nearest between float types: exact to f64, rounded once from there.
            finish(from_f64(to_f64(flush(v, sty, m.ftz), sty), dty), dty, m)
        }
        (true, true) => convert_soft(dty, sty, m, v),
    }
}

/// Conversions to floats in software (rustc_apfloat): every rounding mode, NaN payloads.
fn convert_soft(dty: Ty, sty: Ty, m: Mods, v: u64) -> u64 {
    match sty.float() {
        false => {
            let rnd = round_of(m.rnd);
            let r = if sty.signed() {
                let x = sext(v, sty.bits()) as i128;
                soft!(dty, |_f: F| F::from_i128_r(x, rnd).value)
            } else {
                let x = mask(v, sty.bits()) as u128;
                soft!(dty, |_f: F| F::from_u128_r(x, rnd).value)
            };
            finish(r, dty, m)
        }
        true => {
            let v = flush(v, sty, m.ftz);
            let r = if dty == sty {
                if directed(m.rnd) || m.rnd == Rnd::Near {
                    // cvt.rni.f32.f32 and friends: round to an integral value.
                    soft!(dty, |f: F| f(v).round_to_integral(round_of(m.rnd)).value)
                } else {
                    v
                }
            } else {
                let rnd = round_of(m.rnd);
                let mut lost = false;
                macro_rules! to {
                    ($src:ty) => {{
                        let x = <$src>::from_bits(v as u128);
                        match dty {
                            Ty::F16 => FloatConvert::<Half>::convert_r(x, rnd, &mut lost).value.to_bits() as u64,
                            Ty::Bf16 => FloatConvert::<BFloat>::convert_r(x, rnd, &mut lost).value.to_bits() as u64,
                            Ty::F32 => FloatConvert::<Single>::convert_r(x, rnd, &mut lost).value.to_bits() as u64,
                            _ => FloatConvert::<Double>::convert_r(x, rnd, &mut lost).value.to_bits() as u64,
                        }
                    }};
                }
                match sty {
                    Ty::F16 => to!(Half),
                    Ty::Bf16 => to!(BFloat),
                    Ty::F32 => to!(Single),
                    _ => to!(Double),
                }
            };
            finish(r, dty, m)
        }
    }
}

/// An f32 or f16 value (`ty`) as an 8-bit float, with .satfinite (out of range and infinities
/// give the largest finite value of their sign; NaN stays NaN) and .relu. e4m3 and e5m2 round
/// to nearest; ue8m0 (2^(e-127), no sign, no zero) rounds as `m.rnd` says, down or up.
pub(crate) fn to_f8(f8: F8, ty: Ty, m: Mods, v: u64) -> u64 {
    let nan = is_nan(v, ty);
    let negative = v & sign_bit(ty) != 0;
    if f8 == F8::Ue8m0 {
        let x = to_f64(v, ty);
        return if nan {
            0xff
        } else if negative || x == 0.0 {
            0 // ue8m0 has neither: the smallest value, 2^-127
        } else if x.is_infinite() {
            0xfe
        } else {
            let e = x.log2().floor() as i64;
            let e = if m.rnd == Rnd::Up && x != 2f64.powi(e as i32) { e + 1 } else { e };
            (e + 127).clamp(0, 0xfe) as u64
        };
    }
    if m.relu && negative && !nan {
        return 0;
    }
    let mut lost = false;
    let rnd = Round::NearestTiesToEven;
    let (r, max, out_nan) = match (f8, ty) {
        (F8::E4m3, Ty::F16) => {
            let r = FloatConvert::<Float8E4M3FN>::convert_r(Half::from_bits(v as u128), rnd, &mut lost).value;
            (r.to_bits() as u64, 0x7e, r.is_nan())
        }
        (F8::E4m3, _) => {
            let r = FloatConvert::<Float8E4M3FN>::convert_r(Single::from_bits(v as u128), rnd, &mut lost).value;
            (r.to_bits() as u64, 0x7e, r.is_nan())
        }
        (_, Ty::F16) => {
            let r = FloatConvert::<Float8E5M2>::convert_r(Half::from_bits(v as u128), rnd, &mut lost).value;
            (r.to_bits() as u64, 0x7b, r.is_nan() || r.is_infinite())
        }
        _ => {
            let r = FloatConvert::<Float8E5M2>::convert_r(Single::from_bits(v as u128), rnd, &mut lost).value;
            (r.to_bits() as u64, 0x7b, r.is_nan() || r.is_infinite())
        }
    };
    if nan {
        0x7f
    } else if out_nan {
        max | if negative { 0x80 } else { 0 }
    } else {
        r
    }
}

/// An 8-bit float as `ty` (f16 for e4m3/e5m2, bf16 for ue8m0): exact.
pub(crate) fn from_f8(f8: F8, ty: Ty, v: u64) -> u64 {
    let mut lost = false;
    let rnd = Round::NearestTiesToEven;
    match f8 {
        F8::Ue8m0 if v == 0xff => canonical_nan(ty),
        F8::Ue8m0 => from_f64(2f64.powi(v as i32 - 127), ty),
        F8::E4m3 => FloatConvert::<Half>::convert_r(Float8E4M3FN::from_bits(v as u128), rnd, &mut lost).value.to_bits() as u64,
        F8::E5m2 => FloatConvert::<Half>::convert_r(Float8E5M2::from_bits(v as u128), rnd, &mut lost).value.to_bits() as u64,
    }
}
