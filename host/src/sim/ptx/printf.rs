//! CUDA's device `printf` (`vprintf(format, args)`): C's printf over the argument buffer nvcc
//! packs, each argument at its natural alignment: 4 bytes for int/char (promoted), 8 for
//! long/long long/size_t, pointers and strings (`%s` takes a device pointer), and doubles
//! (float arguments are promoted to double, as in C varargs).

/// Where printf's arguments come from.
pub trait Args {
    type Error;
    /// The `size`-byte (4 or 8) argument at `offset` in the packed buffer.
    fn arg(&mut self, offset: u64, size: usize) -> Result<u64, Self::Error>;
    /// The NUL-terminated string at a device pointer (for %s).
    fn string(&mut self, ptr: u64) -> Result<Vec<u8>, Self::Error>;
}

/// Formats `fmt` with the packed arguments. Returns the text and the number of arguments used.
pub fn format<A: Args>(fmt: &[u8], src: &mut A) -> Result<(Vec<u8>, u32), A::Error> {
    let mut out = Vec::new();
    let mut off = 0u64;
    let mut nargs = 0u32;
    let mut next = |size: usize, nargs: &mut u32, src: &mut A| {
        off = off.div_ceil(size as u64) * size as u64;
        let v = src.arg(off, size);
        off += size as u64;
        *nargs += 1;
        v
    };
    let mut i = 0;
    while i < fmt.len() {
        let c = fmt[i];
        i += 1;
        if c != b'%' {
            out.push(c);
            continue;
        }
        if fmt.get(i) == Some(&b'%') {
            out.push(b'%');
            i += 1;
            continue;
        }
        let start = i - 1;
        let mut spec = Spec::default();
        while let Some(&f) = fmt.get(i) {
            match f {
                b'-' => spec.left = true,
                b'+' => spec.plus = true,
                b' ' => spec.space = true,
                b'#' => spec.alt = true,
                b'0' => spec.zero = true,
                _ => break,
            }
            i += 1;
        }
        if fmt.get(i) == Some(&b'*') {
            let w = next(4, &mut nargs, src)? as u32 as i32;
            spec.left |= w < 0;
            spec.width = w.unsigned_abs() as usize;
            i += 1;
        }
        while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
            spec.width = spec.width.saturating_mul(10).saturating_add((d - b'0') as usize).min(4096);
            i += 1;
        }
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            let mut p = 0usize;
            if fmt.get(i) == Some(&b'*') {
                p = (next(4, &mut nargs, src)? as u32 as i32).max(0) as usize;
                i += 1;
            }
            while let Some(d) = fmt.get(i).filter(|d| d.is_ascii_digit()) {
                p = p.saturating_mul(10).saturating_add((d - b'0') as usize).min(4096);
                i += 1;
            }
            spec.prec = Some(p.min(4096));
        }
        let (mut long, mut short) = (0, 0);
        while let Some(&l) = fmt.get(i) {
            match l {
                b'l' | b'z' | b'j' | b't' | b'L' | b'q' => long += 1,
                b'h' => short += 1,
                _ => break,
            }
            i += 1;
        }
        // %hd/%hhu: the promoted int is printed as the short or char it was (as C does).
        let narrow = |v: u64, signed: bool| match (long, short, signed) {
            (0, 1, true) => v as i16 as i64 as u64,
            (0, 1, false) => v as u16 as u64,
            (0, s, true) if s >= 2 => v as i8 as i64 as u64,
            (0, s, false) if s >= 2 => v as u8 as u64,
            _ => v,
        };
        // C ignores the 0 flag of an integer conversion that has a precision.
        if spec.prec.is_some() && matches!(fmt.get(i), Some(b'd' | b'i' | b'u' | b'x' | b'X' | b'o')) {
            spec.zero = false;
        }
        let Some(&conv) = fmt.get(i) else {
            out.extend_from_slice(&fmt[start..]);
            break;
        };
        i += 1;
        let isize = if long > 0 { 8 } else { 4 };
        let body: Vec<u8> = match conv {
            b'd' | b'i' => {
                let v = next(isize, &mut nargs, src)?;
                let v = if isize == 4 { narrow(v as u32 as i32 as i64 as u64, true) as i64 } else { v as i64 };
                spec.signed(v < 0, digits(v.unsigned_abs(), 10, false, spec.prec))
            }
            b'u' | b'x' | b'X' | b'o' => {
                let v = next(isize, &mut nargs, src)?;
                let v = if isize == 4 { narrow(v as u32 as u64, false) } else { v };
                let (radix, upper) = match conv {
                    b'u' => (10, false),
                    b'o' => (8, false),
                    b'x' => (16, false),
                    _ => (16, true),
                };
                let mut d = digits(v, radix, upper, spec.prec);
                if spec.alt && v != 0 {
                    match conv {
                        b'x' => d.insert_str(0, "0x"),
                        b'X' => d.insert_str(0, "0X"),
                        b'o' if !d.starts_with('0') => d.insert(0, '0'),
                        _ => {}
                    }
                }
                spec.plus = false;
                spec.space = false;
                spec.signed(false, d)
            }
            b'c' => {
                let v = next(4, &mut nargs, src)?;
                spec.zero = false;
                spec.pad(vec![v as u8])
            }
            b's' => {
                let p = next(8, &mut nargs, src)?;
                let mut s = if p == 0 { b"(null)".to_vec() } else { src.string(p)? };
                if let Some(n) = spec.prec {
                    s.truncate(n);
                }
                spec.zero = false;
                spec.pad(s)
            }
            b'p' => {
                let p = next(8, &mut nargs, src)?;
                spec.zero = false;
                spec.pad(format!("{p:#x}").into_bytes())
            }
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => {
                let v = f64::from_bits(next(8, &mut nargs, src)?);
                let text = float(v, conv, spec.prec, spec.alt);
                if v.is_finite() {
                    spec.signed(v.is_sign_negative(), text)
                } else {
                    spec.zero = false;
                    spec.signed(v.is_sign_negative() && !v.is_nan(), text)
                }
            }
            _ => {
                // Unknown conversion: printed as written, like glibc does.
                fmt[start..i].to_vec()
            }
        };
        out.extend_from_slice(&body);
    }
    Ok((out, nargs))
}

#[derive(Default)]
struct Spec {
    left: bool,
    plus: bool,
    space: bool,
    alt: bool,
    zero: bool,
    width: usize,
    prec: Option<usize>,
}

impl Spec {
    /// Sign, zero padding (after the sign and any 0x), then width padding.
    fn signed(&self, negative: bool, body: String) -> Vec<u8> {
        let sign = if negative {
            "-"
        } else if self.plus {
            "+"
        } else if self.space {
            " "
        } else {
            ""
        };
        let (prefix, digits) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            Some(rest) => (&body[..2], rest),
            None => ("", body.as_str()),
        };
        let len = sign.len() + prefix.len() + digits.len();
        // The 0 flag is ignored with a precision for integers (C); callers clear it elsewhere.
        if self.zero && !self.left && self.width > len {
            let mut s = format!("{sign}{prefix}");
            s.push_str(&"0".repeat(self.width - len));
            s.push_str(digits);
            return s.into_bytes();
        }
        self.pad(format!("{sign}{body}").into_bytes())
    }

    fn pad(&self, body: Vec<u8>) -> Vec<u8> {
        if body.len() >= self.width {
            return body;
        }
        let fill = vec![b' '; self.width - body.len()];
        if self.left { [body, fill].concat() } else { [fill, body].concat() }
    }
}

fn digits(v: u64, radix: u32, upper: bool, prec: Option<usize>) -> String {
    let mut s = match radix {
        8 => format!("{v:o}"),
        16 if upper => format!("{v:X}"),
        16 => format!("{v:x}"),
        _ => v.to_string(),
    };
    match prec {
        Some(0) if v == 0 => s.clear(),
        Some(p) if s.len() < p => s.insert_str(0, &"0".repeat(p - s.len())),
        _ => {}
    }
    s
}

/// The digits of |v| for %f/%e/%g/%a (the sign is added by the caller).
fn float(v: f64, conv: u8, prec: Option<usize>, alt: bool) -> String {
    let upper = conv.is_ascii_uppercase();
    let a = v.abs();
    let s = if v.is_nan() {
        "nan".to_string()
    } else if v.is_infinite() {
        "inf".to_string()
    } else {
        match conv.to_ascii_lowercase() {
            b'f' => format!("{a:.*}", prec.unwrap_or(6)),
            b'e' => exp_form(a, prec.unwrap_or(6)),
            b'g' => {
                let p = prec.unwrap_or(6).max(1);
                // The exponent %e would print decides between the two forms.
                let e = exp_form(a, p - 1);
                let x: i32 = e.rsplit('e').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let mut s = if x < -4 || x >= p as i32 { e } else { format!("{a:.*}", (p as i32 - 1 - x).max(0) as usize) };
                if !alt {
                    s = strip_zeros(&s);
                }
                s
            }
            _ => hex_float(a, prec),
        }
    };
    if upper { s.to_ascii_uppercase() } else { s }
}

/// C's %e: d.ddddde±XX.
fn exp_form(a: f64, prec: usize) -> String {
    let r = format!("{a:.prec$e}");
    let (m, x) = r.split_once('e').unwrap_or((&r, "0"));
    let x: i32 = x.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs())
}

/// %g drops trailing zeros of the fraction (and the point if nothing is left).
fn strip_zeros(s: &str) -> String {
    let (m, e) = match s.find('e') {
        Some(k) => (&s[..k], &s[k..]),
        None => (s, ""),
    };
    let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
    format!("{m}{e}")
}

/// C's %a: 0x1.hhhhp±d (exact; with a precision, rounded half to even on the hex digits).
fn hex_float(a: f64, prec: Option<usize>) -> String {
    if a == 0.0 {
        return match prec {
            Some(p) if p > 0 => format!("0x0.{}p+0", "0".repeat(p)),
            _ => "0x0p+0".to_string(),
        };
    }
    let bits = a.to_bits();
    let (mut exp, mut mant, lead) = if bits >> 52 == 0 { (-1022i64, bits & ((1 << 52) - 1), 0u64) } else { (((bits >> 52) & 0x7ff) as i64 - 1023, bits & ((1 << 52) - 1), 1u64) };
    let mut lead = lead;
    if let Some(p) = prec.filter(|&p| p < 13) {
        let drop = (13 - p) * 4;
        let full = (lead << 52) | mant;
        let half = 1u64 << (drop - 1);
        let rem = full & ((1u64 << drop) - 1);
        let mut kept = full >> drop;
        if rem > half || (rem == half && kept & 1 == 1) {
            kept += 1;
        }
        let full = kept << drop;
        lead = full >> 52;
        mant = full & ((1 << 52) - 1);
        if lead == 2 {
            lead = 1;
            exp += 1;
        }
        let hex = format!("{mant:013x}");
        let frac = &hex[..p];
        return if frac.is_empty() { format!("0x{lead}p{exp:+}") } else { format!("0x{lead}.{frac}p{exp:+}") };
    }
    let hex = format!("{mant:013x}");
    let frac = match prec {
        Some(p) => format!("{hex}{}", "0".repeat(p - 13)),
        None => hex.trim_end_matches('0').to_string(),
    };
    if frac.is_empty() { format!("0x{lead}p{exp:+}") } else { format!("0x{lead}.{frac}p{exp:+}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs arguments as nvcc does: natural alignment.
    enum A<'a> {
        I(i32),
        L(i64),
        D(f64),
        S(&'a str),
    }

    fn fmt(f: &str, args: &[A]) -> String {
        let mut buf = Vec::new();
        let mut strings = Vec::new();
        for a in args {
            let (bytes, align): (Vec<u8>, usize) = match a {
                A::I(v) => (v.to_le_bytes().to_vec(), 4),
                A::L(v) => (v.to_le_bytes().to_vec(), 8),
                A::D(v) => (v.to_bits().to_le_bytes().to_vec(), 8),
                A::S(s) => {
                    strings.push(s.as_bytes().to_vec());
                    ((0x1000 + strings.len() as u64 - 1).to_le_bytes().to_vec(), 8)
                }
            };
            buf.resize(buf.len().div_ceil(align) * align, 0);
            buf.extend(bytes);
        }
        struct Src {
            buf: Vec<u8>,
            strings: Vec<Vec<u8>>,
        }
        impl Args for Src {
            type Error = ();
            fn arg(&mut self, off: u64, size: usize) -> Result<u64, ()> {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(&self.buf[off as usize..off as usize + size]);
                Ok(u64::from_le_bytes(b))
            }
            fn string(&mut self, p: u64) -> Result<Vec<u8>, ()> {
                Ok(self.strings[(p - 0x1000) as usize].clone())
            }
        }
        let (out, n) = format(f.as_bytes(), &mut Src { buf, strings }).unwrap();
        assert_eq!(n as usize, args.len(), "{f}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn matches_c_printf() {
        use A::*;
        assert_eq!(fmt("thread %d of %u: %s\n", &[I(-3), I(7), S("hi")]), "thread -3 of 7: hi\n");
        assert_eq!(fmt("%5d|%-5d|%05d|%+d|% d", &[I(42), I(42), I(-42), I(42), I(42)]), "   42|42   |-0042|+42| 42");
        assert_eq!(fmt("%x %X %#x %o %#o %.3d", &[I(255), I(255), I(255), I(8), I(8), I(7)]), "ff FF 0xff 10 010 007");
        assert_eq!(fmt("%ld %lld %llx %lu", &[L(-1), L(1 << 40), L(-1), L(u32::MAX as i64 + 1)]), "-1 1099511627776 ffffffffffffffff 4294967296");
        assert_eq!(fmt("%f %.2f %8.3f %-8.1f| %e %.0e", &[D(1.5), D(-2.345), D(4.56789), D(2.0), D(12345.678), D(0.00016)]), "1.500000 -2.35    4.568 2.0     | 1.234568e+04 2e-04");
        assert_eq!(fmt("%g %g %g %g %G %#g", &[D(100000.0), D(1e6), D(0.0001), D(1e-5), D(1.5e-10), D(1.0)]), "100000 1e+06 0.0001 1e-05 1.5E-10 1.00000");
        assert_eq!(fmt("%c%c %s %.2s %5s", &[I(b'o' as i32), I(b'k' as i32), S("str"), S("abc"), S("ab")]), "ok str ab    ab");
        assert_eq!(fmt("%a %A %.1a %a", &[D(1.0), D(-0.5), D(1.5), D(0.1)]), "0x1p+0 -0X1P-1 0x1.8p+0 0x1.999999999999ap-4");
        assert_eq!(fmt("%f %f %e", &[D(f64::INFINITY), D(f64::NAN), D(-f64::INFINITY)]), "inf nan -inf");
        assert_eq!(fmt("%*d|%-*d|%.*f", &[I(4), I(7), I(3), I(7), I(2), D(0.125)]), "   7|7  |0.12");
        assert_eq!(fmt("100%% %d%%", &[I(5)]), "100% 5%");
        assert_eq!(fmt("%d %y", &[I(1)]), "1 %y");
        assert_eq!(fmt("%08.3d|%06.2x|%-06d|%08.3f", &[I(7), I(10), I(-5), D(-2.5)]), "     007|    0a|-5    |-002.500");
        assert_eq!(fmt("%hd %hu %hhd %hhx %hx", &[I(70000), I(-1), I(200), I(-1), I(0x12345)]), "4464 65535 -56 ff 2345");
    }
}
