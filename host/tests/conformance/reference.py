"""Reference semantics of PTX instructions, written from the PTX ISA text, independent of the sim.

Floats are decoded into exact rationals (fractions.Fraction) and every result is rounded once,
by `encode`, to the destination format in the instruction's rounding mode: this is the IEEE 754
definition the PTX ISA cites, computed with Python's exact arithmetic instead of a float unit.
Nothing here is shared with the Rust interpreter. A function returns the result's bits, NAN
(any NaN of the format is right: the ISA does not fix payloads), or None where the ISA leaves
the result undefined (then only a GPU's golden file can say).
"""

from fractions import Fraction
import math

NAN = "nan"


class Fmt:
    def __init__(self, name, ebits, mbits, ieee=True):
        self.name, self.ebits, self.mbits, self.ieee = name, ebits, mbits, ieee
        self.bits = 1 + ebits + mbits
        self.bias = (1 << (ebits - 1)) - 1
        self.emin = 1 - self.bias
        # IEEE formats reserve the top exponent for inf/NaN; e4m3 uses it for numbers except
        # its all-ones mantissa (NaN) and has no infinity (OCP FP8).
        self.emax = ((1 << ebits) - 2 - self.bias) if ieee else ((1 << ebits) - 1 - self.bias)
        top_mant = ((1 << mbits) - 1) if ieee else ((1 << mbits) - 2)
        self.max_finite = Fraction((1 << mbits) + top_mant, 1 << mbits) * Fraction(2) ** self.emax

    def canonical_nan(self):
        return NAN


F16 = Fmt("f16", 5, 10)
BF16 = Fmt("bf16", 8, 7)
F32 = Fmt("f32", 8, 23)
F64 = Fmt("f64", 11, 52)
E4M3 = Fmt("e4m3", 4, 3, ieee=False)
E5M2 = Fmt("e5m2", 5, 2)
FORMATS = {f.name: f for f in (F16, BF16, F32, F64)}


# A decoded float: ("nan",), ("inf", sign) or ("num", sign, magnitude as Fraction).
def decode(bits, f):
    sign = (bits >> (f.bits - 1)) & 1
    e = (bits >> f.mbits) & ((1 << f.ebits) - 1)
    m = bits & ((1 << f.mbits) - 1)
    top = (1 << f.ebits) - 1
    if f.ieee and e == top:
        return ("nan",) if m else ("inf", sign)
    if not f.ieee and e == top and m == (1 << f.mbits) - 1:
        return ("nan",)
    if e == 0:
        mag = Fraction(m, 1 << f.mbits) * Fraction(2) ** f.emin
    else:
        mag = Fraction((1 << f.mbits) + m, 1 << f.mbits) * Fraction(2) ** (e - f.bias)
    return ("num", sign, mag)


def is_subnormal(bits, f):
    e = (bits >> f.mbits) & ((1 << f.ebits) - 1)
    return e == 0 and bits & ((1 << f.mbits) - 1) != 0


def floor_log2(x):
    """floor(log2(x)) of a positive Fraction."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    elif Fraction(2) ** (e + 1) <= x:
        e += 1
    return e


def round_int(x, mode, sign=0):
    """Rounds a non-negative Fraction magnitude to an integer. `sign` is the value's sign (the
    directed modes round the signed value). Modes: rn (ties to even), rna (ties away), rz, rm, rp."""
    q, r = divmod(x.numerator, x.denominator)
    rem = Fraction(r, x.denominator)
    if rem == 0:
        return q
    if mode == "rn":
        return q + 1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and q % 2 == 1) else q
    if mode == "rna":
        return q + 1 if rem >= Fraction(1, 2) else q
    if mode == "rz":
        return q
    if mode == "rm":
        return q + 1 if sign else q
    if mode == "rp":
        return q if sign else q + 1
    raise ValueError(mode)


def encode(sign, mag, f, mode="rn", ftz=False, satfinite=False):
    """The bits of (-1)^sign * mag rounded to format f. mag is a Fraction >= 0 or "inf"."""
    sbit = sign << (f.bits - 1)
    if mag == "inf":
        if satfinite:
            return sbit | encode(0, f.max_finite, f)
        return (sbit | (((1 << f.ebits) - 1) << f.mbits)) if f.ieee else NAN
    if mag == 0:
        return sbit
    e = max(floor_log2(mag), f.emin)
    quantum = Fraction(2) ** (e - f.mbits)
    m = round_int(mag / quantum, mode, sign)
    if m == 1 << (f.mbits + 1):
        m >>= 1
        e += 1
    value = m * Fraction(2) ** (e - f.mbits)
    if value > f.max_finite:
        # Overflow: infinity, or the largest finite value where the rounding direction points
        # away from infinity (and with .satfinite); e4m3 has no infinity: NaN.
        if satfinite or mode == "rz" or (mode == "rm" and not sign) or (mode == "rp" and sign):
            return sbit | encode(0, f.max_finite, f)
        return (sbit | (((1 << f.ebits) - 1) << f.mbits)) if f.ieee else NAN
    if m < (1 << f.mbits):  # subnormal
        if ftz:
            return sbit
        return sbit | m
    return sbit | ((e + f.bias) << f.mbits) | (m - (1 << f.mbits))


def flush(bits, f, ftz):
    """An input as .ftz sees it: subnormals become zero of the same sign."""
    if ftz and is_subnormal(bits, f):
        return bits & (1 << (f.bits - 1))
    return bits


def _sum(a, b):
    """Exact sum of two decoded finite values: (sign, mag) with mag possibly 0 (sign then TBD)."""
    va = (-a[2] if a[1] else a[2])
    vb = (-b[2] if b[1] else b[2])
    s = va + vb
    return (1 if s < 0 else 0), abs(s)


def add(x, y, f, mode="rn", ftz=False, sub=False, sat=False):
    x, y = flush(x, f, ftz), flush(y, f, ftz)
    a, b = decode(x, f), decode(y, f)
    if sub and b[0] != "nan":
        b = (b[0], 1 - b[1]) + b[2:]
    return _finish_add(a, b, f, mode, ftz, sat)


def _finish_add(a, b, f, mode, ftz, sat):
    if a[0] == "nan" or b[0] == "nan":
        return _sat(NAN, f, sat)
    if a[0] == "inf" and b[0] == "inf":
        return _sat(NAN if a[1] != b[1] else encode(a[1], "inf", f), f, sat)
    if a[0] == "inf" or b[0] == "inf":
        inf = a if a[0] == "inf" else b
        return _sat(encode(inf[1], "inf", f), f, sat)
    sign, mag = _sum(a, b)
    if mag == 0:
        # IEEE 754: an exact zero sum of opposite signs is +0 (-0 when rounding down);
        # same-signed zeros keep their sign.
        if a[1] == b[1]:
            sign = a[1]
        else:
            sign = 1 if mode == "rm" else 0
    return _sat(encode(sign, mag, f, mode, ftz), f, sat)


def _sat(bits, f, sat):
    """.sat: clamp to [0.0, 1.0], NaN to +0."""
    if not sat:
        return bits
    if bits == NAN:
        return 0
    d = decode(bits, f)
    if d[0] == "nan":
        return 0
    if d[0] == "num" and d[2] == 0 and d[1] == 1:
        return None  # -0.0: the ISA does not say whether clamping gives +0.0
    if d[1] == 1:
        return 0
    if d[0] == "inf" or d[2] > 1:
        return encode(0, Fraction(1), f)
    return bits


def _product(a, b):
    """The exact product of two decoded values: NaN for a NaN operand or 0 * inf."""
    if a[0] == "nan" or b[0] == "nan":
        return ("nan",)
    sign = a[1] ^ b[1]
    if a[0] == "inf" or b[0] == "inf":
        other = b if a[0] == "inf" else a
        return ("nan",) if other[0] == "num" and other[2] == 0 else ("inf", sign)
    return ("num", sign, a[2] * b[2])


def mul(x, y, f, mode="rn", ftz=False, sat=False):
    x, y = flush(x, f, ftz), flush(y, f, ftz)
    p = _product(decode(x, f), decode(y, f))
    if p[0] == "nan":
        return _sat(NAN, f, sat)
    return _sat(encode(p[1], "inf" if p[0] == "inf" else p[2], f, mode, ftz), f, sat)


def fma(x, y, z, f, mode="rn", ftz=False, sat=False):
    x, y, z = flush(x, f, ftz), flush(y, f, ftz), flush(z, f, ftz)
    p, c = _product(decode(x, f), decode(y, f)), decode(z, f)
    if p[0] == "nan" or c[0] == "nan":
        return _sat(NAN, f, sat)
    return _finish_add(p, c, f, mode, ftz, sat)


def div(x, y, f, mode="rn", ftz=False):
    x, y = flush(x, f, ftz), flush(y, f, ftz)
    a, b = decode(x, f), decode(y, f)
    if a[0] == "nan" or b[0] == "nan":
        return NAN
    sign = a[1] ^ b[1]
    if a[0] == "inf":
        return NAN if b[0] == "inf" else encode(sign, "inf", f)
    if b[0] == "inf":
        return encode(sign, 0, f)
    if b[2] == 0:
        return NAN if a[2] == 0 else encode(sign, "inf", f)
    return encode(sign, a[2] / b[2], f, mode, ftz)


def rcp(x, f, mode="rn", ftz=False):
    return div(encode(0, Fraction(1), f), x, f, mode, ftz)


def sqrt(x, f, mode="rn", ftz=False):
    x = flush(x, f, ftz)
    a = decode(x, f)
    if a[0] == "nan":
        return NAN
    if a[0] == "inf":
        return NAN if a[1] else x
    if a[2] == 0:
        return x  # sqrt(-0) = -0
    if a[1]:
        return NAN
    # sqrt of a dyadic rational to 1200 fractional bits plus a sticky bit: far more than any
    # format's precision, so rounding it once is rounding the exact root.
    k = 1200
    scaled = a[2] * Fraction(2) ** (2 * k)
    n = scaled.numerator // scaled.denominator
    s = math.isqrt(n)
    exact = s * s == n and scaled.denominator == 1
    root = Fraction(s, 1 << k) + (0 if exact else Fraction(1, 1 << (k + 1)))
    return encode(0, root, f, mode, ftz)


def is_nan(bits, f):
    return decode(bits, f)[0] == "nan"


def value(bits, f):
    """A decoded value as a signed Fraction/inf for comparisons (None for NaN)."""
    d = decode(bits, f)
    if d[0] == "nan":
        return None
    if d[0] == "inf":
        return math.inf if d[1] == 0 else -math.inf
    return -d[2] if d[1] else d[2]


def minmax(x, y, f, is_max, nan_mode=False, ftz=False):
    """min/max: a NaN operand is ignored (both NaN: NaN); .NaN makes any NaN the result. The ISA
    does not order -0 and +0 for min/max: such a pair is left to the golden file."""
    x, y = flush(x, f, ftz), flush(y, f, ftz)
    nx, ny = is_nan(x, f), is_nan(y, f)
    if nx or ny:
        if nan_mode or (nx and ny):
            return NAN
        return y if nx else x
    vx, vy = value(x, f), value(y, f)
    if vx == vy:
        return x if x == y else None
    return x if (vx > vy) == is_max else y


def compare(cmp, x, y, f):
    vx, vy = value(x, f), value(y, f)
    unordered = vx is None or vy is None
    base = {"eq": lambda: vx == vy, "ne": lambda: vx != vy, "lt": lambda: vx < vy, "le": lambda: vx <= vy,
            "gt": lambda: vx > vy, "ge": lambda: vx >= vy}
    if cmp == "num":
        return not unordered
    if cmp == "nan":
        return unordered
    if cmp in ("equ", "neu", "ltu", "leu", "gtu", "geu"):
        return unordered or base[cmp[:-1]]()
    return (not unordered) and base[cmp]()


# ---- integers ----

def wrap(v, bits):
    return v & ((1 << bits) - 1)


def signed(v, bits):
    v = wrap(v, bits)
    return v - (1 << bits) if v >> (bits - 1) else v


def int_value(v, bits, is_signed):
    return signed(v, bits) if is_signed else wrap(v, bits)


def clamp_int(v, bits, is_signed):
    lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if is_signed else (0, (1 << bits) - 1))
    return wrap(min(max(v, lo), hi), bits)


def float_to_int(x, f, bits, is_signed, mode, ftz=False):
    """cvt.{rni,rzi,rmi,rpi}.{s,u}N.fM: float-to-integer conversions saturate; NaN gives 0."""
    x = flush(x, f, ftz)
    d = decode(x, f)
    if d[0] == "nan":
        return 0
    if d[0] == "inf":
        return clamp_int(-(1 << 200) if d[1] else (1 << 200), bits, is_signed)
    n = round_int(d[2], mode, d[1])
    return clamp_int(-n if d[1] else n, bits, is_signed)


def int_to_float(v, bits, is_signed, f, mode):
    n = int_value(v, bits, is_signed)
    return encode(1 if n < 0 else 0, Fraction(abs(n)), f, mode)


def float_to_float(x, sf, df, mode="rn", ftz=False, sat=False, relu=False, satfinite=False):
    x = flush(x, sf, ftz and sf is F32)
    d = decode(x, sf)
    if d[0] == "nan":
        return _sat(NAN, df, sat)
    if relu and d[1] == 1:
        return 0
    if d[0] == "inf":
        r = encode(d[1], "inf", df, satfinite=satfinite)
    else:
        r = encode(d[1], d[2], df, mode, ftz and df is F32, satfinite=satfinite)
    return _sat(r, df, sat)


def round_to_integral(x, f, mode, ftz=False):
    """cvt.{rni,rzi,rmi,rpi}.fN.fN: round to an integral value in the same format."""
    x = flush(x, f, ftz)
    d = decode(x, f)
    if d[0] != "num":
        return NAN if d[0] == "nan" else x
    n = round_int(d[2], mode, d[1])
    return encode(d[1], Fraction(n), f)
