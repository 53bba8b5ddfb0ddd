#!/usr/bin/env python3
"""The PTX conformance corpus: one small kernel per instruction form, with edge-case inputs and the
results the PTX ISA gives for them (reference.py), as JSON.

    python3 corpus.py OUT.json

Each form's kernel runs one thread per case: it loads the case's operands from 8-byte input
slots into registers of the operand's class (pred, b16, b32, b64), executes the instruction
under test, and stores each result register (full register width) into an 8-byte output slot.
The output buffer starts filled with 0xA5 bytes, so a store that writes too much or too little
shows. Runners: host/tests/conformance.rs (the sim, in CI) and run_driver.py (any libcuda.so.1:
NVIDIA's on a GPU machine writes the golden file, see scripts/gpu-check.sh).

Expected values: an integer (the output's bits), "nan" (any NaN of the output's float format),
a list of those per 16-bit lane for packed halves, or null where the ISA leaves the result
undefined (only a GPU's golden file then says what it is).
"""

import json
import random
import struct
import sys
from fractions import Fraction

import reference as R
from reference import NAN, F16, BF16, F32, F64, E4M3, E5M2

SEED = 20261205
WIDTH = {"pred": 1, "b16": 16, "b32": 32, "b64": 64}
REG = {"pred": "%p", "b16": "%h", "b32": "%r", "b64": "%rd"}
PLACE_IN = ["a", "b", "c", "e"]
PLACE_OUT = ["d", "q", "d2", "d3"]
SLOTS = 16  # 8-byte input slots per case, and as many output slots

HEADER = """.version 8.0
.target sm_90
.address_size 64

.visible .entry conformance(.param .u64 in_ptr, .param .u64 out_ptr, .param .u32 n)
{
\t.reg .pred %p<16>;
\t.reg .b16 %h<16>;
\t.reg .b32 %r<24>;
\t.reg .b64 %rd<16>;
\t.reg .b64 %in, %out, %off;
\t.reg .pred %pdone;
\t.reg .b32 %ri, %rn, %rt;
\tmov.u32 %ri, %ctaid.x;
\tmov.u32 %rt, %ntid.x;
\tmov.u32 %rn, %tid.x;
\tmad.lo.u32 %ri, %ri, %rt, %rn;
\tld.param.u32 %rn, [n];
\tsetp.ge.u32 %pdone, %ri, %rn;
\t@%pdone bra $DONE;
\tld.param.u64 %in, [in_ptr];
\tcvta.to.global.u64 %in, %in;
\tmul.wide.u32 %off, %ri, 128;
\tadd.s64 %in, %in, %off;
\tld.param.u64 %out, [out_ptr];
\tcvta.to.global.u64 %out, %out;
\tadd.s64 %out, %out, %off;
"""
FOOTER = """$DONE:
\tret;
}
"""


class Form:
    """An instruction form: PTX text with {a},{b},{c},{e} for inputs and {d},{q},{d2},{d3} for
    outputs; operand classes pred/b16/b32/b64, or "mem" (the slot itself: {x} is its address)."""

    def __init__(self, name, text, ins, outs, checks=None, decls="", module_decls=""):
        self.name, self.text, self.ins, self.outs, self.decls = name, text, ins, outs, decls
        self.module_decls = module_decls  # before the kernel: .const / .global variables
        # Per output: {"bits": W} or {"bits": W, "float": fmt} or {"bits": W, "lanes": fmt}.
        self.checks = checks or [{"bits": 64 if c == "mem" else WIDTH[c]} for c in outs]
        self.cases = []

    def case(self, ins, outs):
        self.cases.append({"in": [int(v) & (2**64 - 1) for v in ins], "out": outs})

    def ptx(self):
        body, stores, counters, names = [], [], {}, {}
        # Registers by class, in order: the inputs' first, then the outputs'. `i<k>`/`o<k>` name
        # each operand, and a/b/c/e and d/q/d2/d3 the first four of each.
        for prefix, aliases, base, classes in (("i", PLACE_IN, "%in", self.ins), ("o", PLACE_OUT, "%out", self.outs)):
            for k, cls in enumerate(classes):
                if cls == "mem":
                    place = f"{base}+{8 * k}"
                else:
                    j = counters.get(cls, 0)
                    counters[cls] = j + 1
                    place = f"{REG[cls]}{j}"
                    if prefix == "i" and cls == "pred":
                        body.append(f"\tld.global.b32 %rt, [%in+{8 * k}];\n\tsetp.ne.b32 {place}, %rt, 0;")
                    elif prefix == "i":
                        body.append(f"\tld.global.b{WIDTH[cls]} {place}, [%in+{8 * k}];")
                    elif cls == "pred":
                        stores.append(f"\tselp.b32 %rt, 1, 0, {place};\n\tst.global.b32 [%out+{8 * k}], %rt;")
                    else:
                        stores.append(f"\tst.global.b{WIDTH[cls]} [%out+{8 * k}], {place};")
                names[f"{prefix}{k}"] = place
                if k < 4:
                    names[aliases[k]] = place
        assert len(self.ins) <= SLOTS and len(self.outs) <= SLOTS, self.name
        assert all(v <= {"pred": 16, "b16": 16, "b32": 24, "b64": 16}[c] for c, v in counters.items()), self.name
        inst = "\t" + self.text.format(**names).replace("\n", "\n\t")
        decls = [f"\t{d}" for d in self.decls.splitlines() if d.strip()]
        header = HEADER.replace(".visible .entry", self.module_decls + "\n\n.visible .entry") if self.module_decls else HEADER
        return header + "\n".join(decls + body + [inst] + stores) + "\n" + FOOTER

    def json(self):
        return {"name": self.name, "ptx": self.ptx(), "checks": self.checks, "cases": self.cases}


# ---------------------------------------------------------------- input values

def int_edges(bits):
    m = (1 << bits) - 1
    top = 1 << (bits - 1)
    vals = {0, 1, 2, 3, 5, 7, 8, 31, 32, 33, 63, 64, 0x7f, 0x80, 0xff, 0x100, m, m - 1, top, top - 1, top + 1,
            m & 0x5555555555555555, m & 0xAAAAAAAAAAAAAAAA, m & 0x0123456789ABCDEF, m & 0xFEDCBA9876543210}
    return sorted(v & m for v in vals)


def rand_ints(rng, bits, n):
    return [rng.getrandbits(bits) for _ in range(n)]


def float_edges(f):
    enc = lambda s, x: R.encode(s, Fraction(x), f)
    sub_min = 1
    sub_max = (1 << f.mbits) - 1
    norm_min = 1 << f.mbits
    inf = ((1 << f.ebits) - 1) << f.mbits
    qnan = inf | (1 << (f.mbits - 1))
    snan = inf | 1
    maxf = R.encode(0, f.max_finite, f)
    vals = [0, sub_min, sub_max, norm_min, enc(0, 1), enc(0, Fraction(3, 2)), enc(0, 2), enc(0, 3),
            enc(0, Fraction(1, 3)), enc(0, Fraction(1, 10)), enc(0, 100), enc(0, Fraction(5, 2)),
            enc(0, Fraction(7, 2)), maxf, inf, enc(0, 1) + 1]
    sign = 1 << (f.bits - 1)
    out = vals + [v | sign for v in vals] + [qnan, snan, qnan | sign, qnan | 0x5]
    return out


def rand_floats(rng, f, n):
    out = []
    for _ in range(n):
        # Mostly ordinary magnitudes around 1, some anywhere in the format.
        if rng.random() < 0.7:
            e = rng.randint(-8, 8) + f.bias
            v = (rng.getrandbits(1) << (f.bits - 1)) | (e << f.mbits) | rng.getrandbits(f.mbits)
        else:
            v = rng.getrandbits(f.bits)
        out.append(v)
    return out


def pairs(xs, ys):
    return [(x, y) for x in xs for y in ys]


# ---------------------------------------------------------------- families

INT_TYPES = [(t, b, s) for b in (16, 32, 64) for (t, s) in ((f"u{b}", False), (f"s{b}", True))]


def cls_of(bits):
    return {1: "pred", 8: "b16", 16: "b16", 32: "b32", 64: "b64"}[bits]


def integer_forms(rng):
    forms = []
    for ty, bits, sg in INT_TYPES:
        c = cls_of(bits)
        xs = int_edges(bits)
        two = pairs(xs[::2], xs[1::2]) + list(zip(rand_ints(rng, bits, 48), rand_ints(rng, bits, 48)))
        v = lambda x: R.int_value(x, bits, sg)
        w = lambda x: R.wrap(x, bits)
        binops = {
            "add": lambda x, y: w(v(x) + v(y)),
            "sub": lambda x, y: w(v(x) - v(y)),
            "mul.lo": lambda x, y: w(v(x) * v(y)),
            "mul.hi": lambda x, y: w((v(x) * v(y)) >> bits),
            "min": lambda x, y: w(min(v(x), v(y))),
            "max": lambda x, y: w(max(v(x), v(y))),
            # Division truncates toward zero; by zero the ISA leaves the result unspecified.
            "div": lambda x, y: None if v(y) == 0 else w(abs(v(x)) // abs(v(y)) * (-1 if (v(x) < 0) != (v(y) < 0) else 1)),
            "rem": lambda x, y: None if v(y) == 0 else w(v(x) - v(y) * (abs(v(x)) // abs(v(y)) * (-1 if (v(x) < 0) != (v(y) < 0) else 1))),
        }
        for op, fn in binops.items():
            f = Form(f"{op}.{ty}", f"{op}.{ty} {{d}}, {{a}}, {{b}};", [c, c], [c])
            for x, y in two:
                f.case([x, y], [fn(x, y)])
            forms.append(f)
        # mad.lo / mad.hi
        for hl in ("lo", "hi"):
            f = Form(f"mad.{hl}.{ty}", f"mad.{hl}.{ty} {{d}}, {{a}}, {{b}}, {{c}};", [c, c, c], [c])
            for (x, y), z in zip(two, rand_ints(rng, bits, len(two))):
                p = v(x) * v(y)
                p = w(p) if hl == "lo" else w(p >> bits)
                f.case([x, y, z], [w(p + z)])
            forms.append(f)
        if bits < 64:
            wc = cls_of(bits * 2)
            f = Form(f"mul.wide.{ty}", f"mul.wide.{ty} {{d}}, {{a}}, {{b}};", [c, c], [wc])
            for x, y in two:
                f.case([x, y], [R.wrap(v(x) * v(y), bits * 2)])
            forms.append(f)
            f = Form(f"mad.wide.{ty}", f"mad.wide.{ty} {{d}}, {{a}}, {{b}}, {{c}};", [c, c, wc], [wc])
            for (x, y), z in zip(two, rand_ints(rng, bits * 2, len(two))):
                f.case([x, y, z], [R.wrap(v(x) * v(y) + R.int_value(z, bits * 2, sg), bits * 2)])
            forms.append(f)
        if sg:
            for op, fn in (("abs", lambda x: w(abs(v(x)))), ("neg", lambda x: w(-v(x)))):
                f = Form(f"{op}.{ty}", f"{op}.{ty} {{d}}, {{a}};", [c], [c])
                for x in xs + rand_ints(rng, bits, 16):
                    f.case([x], [fn(x)])
                forms.append(f)
        # Comparisons, all integer operators.
        for cmp in ("eq", "ne", "lt", "le", "gt", "ge") + (() if sg else ("lo", "ls", "hi", "hs")):
            f = Form(f"setp.{cmp}.{ty}", f"setp.{cmp}.{ty} {{d}}|{{q}}, {{a}}, {{b}};", [c, c], ["pred", "pred"])
            py = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "lo": "<", "ls": "<=", "hi": ">", "hs": ">="}[cmp]
            for x, y in two + [(x, x) for x in xs[:6]]:
                r = eval(f"v(x) {py} v(y)")
                f.case([x, y], [int(r), int(not r)])
            forms.append(f)
        # Shifts (amount in a u32 register; amounts >= width clamp).
        if ty[0] == "u" or ty[0] == "s":
            for op in ("shl", "shr"):
                sty = f"b{bits}" if op == "shl" else ty
                f = Form(f"{op}.{sty}", f"{op}.{sty} {{d}}, {{a}}, {{b}};", [c, "b32"], [c])
                for x in xs[::3]:
                    for n in (0, 1, 3, bits - 1, bits, bits + 1, 255, 2**32 - 1):
                        if op == "shl":
                            r = w(x << min(n, bits))
                        else:
                            r = w(v(x) >> min(n, bits)) if sg else w(x >> min(n, bits))
                        f.case([x, n], [r])
                if not (op == "shl" and sg):
                    forms.append(f)
    # Saturating 32-bit add/sub.
    for op in ("add", "sub"):
        f = Form(f"{op}.sat.s32", f"{op}.sat.s32 {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"])
        xs = int_edges(32)
        for x, y in pairs(xs[::2], xs[1::2]):
            r = R.signed(x, 32) + (R.signed(y, 32) if op == "add" else -R.signed(y, 32))
            f.case([x, y], [R.clamp_int(r, 32, True)])
        forms.append(f)
    # Bitwise and bit-field instructions.
    for bits in (16, 32, 64):
        c = cls_of(bits)
        xs = int_edges(bits)
        m = (1 << bits) - 1
        for op, fn in (("and", lambda x, y: x & y), ("or", lambda x, y: x | y), ("xor", lambda x, y: x ^ y)):
            f = Form(f"{op}.b{bits}", f"{op}.b{bits} {{d}}, {{a}}, {{b}};", [c, c], [c])
            for x, y in pairs(xs[::3], xs[1::3]):
                f.case([x, y], [fn(x, y)])
            forms.append(f)
        for op, fn in (("not", lambda x: ~x & m), ("cnot", lambda x: int(x == 0))):
            f = Form(f"{op}.b{bits}", f"{op}.b{bits} {{d}}, {{a}};", [c], [c])
            for x in xs:
                f.case([x], [fn(x)])
            forms.append(f)
        if bits >= 32:
            for op, fn in (("popc", lambda x: bin(x).count("1")), ("clz", lambda x: bits - x.bit_length())):
                f = Form(f"{op}.b{bits}", f"{op}.b{bits} {{d}}, {{a}};", [c], ["b32"])
                for x in xs + rand_ints(rng, bits, 16):
                    f.case([x], [fn(x)])
                forms.append(f)
            f = Form(f"brev.b{bits}", f"brev.b{bits} {{d}}, {{a}};", [c], [c])
            for x in xs + rand_ints(rng, bits, 16):
                f.case([x], [int(format(x, f"0{bits}b")[::-1], 2)])
            forms.append(f)
            for sg in (False, True):
                ty = f"{'s' if sg else 'u'}{bits}"
                f = Form(f"bfe.{ty}", f"bfe.{ty} {{d}}, {{a}}, {{b}}, {{c}};", [c, "b32", "b32"], [c])
                for x in xs[::2] + rand_ints(rng, bits, 4):
                    for pos in (0, 1, 7, bits // 2, bits - 1, bits, 255, 256 + 3):
                        for ln in (0, 1, 4, 8, bits - 1, bits, 255, 256 + 2):
                            f.case([x, pos, ln], [bfe_ref(x, pos, ln, bits, sg)])
                forms.append(f)
            f = Form(f"bfi.b{bits}", f"bfi.b{bits} {{d}}, {{a}}, {{b}}, {{c}}, {{e}};", [c, c, "b32", "b32"], [c])
            for x, y in list(zip(rand_ints(rng, bits, 6), rand_ints(rng, bits, 6))):
                for pos in (0, 1, 7, bits // 2, bits - 1, bits, 255, 256 + 3):
                    for ln in (0, 1, 4, 8, bits - 1, bits, 255, 256 + 2):
                        f.case([x, y, pos, ln], [bfi_ref(x, y, pos, ln, bits)])
            forms.append(f)
    for lut in (0x00, 0xFF, 0x96, 0xE8, 0xF0, 0xCC, 0xAA, 0x1E, 0x80, 0xFE, 0x6A):
        f = Form(f"lop3.b32.{lut:#04x}", f"lop3.b32 {{d}}, {{a}}, {{b}}, {{c}}, {lut};", ["b32"] * 3, ["b32"])
        for x, y, z in zip(rand_ints(rng, 32, 24), rand_ints(rng, 32, 24), rand_ints(rng, 32, 24)):
            r = 0
            for i in range(32):
                idx = ((x >> i) & 1) << 2 | ((y >> i) & 1) << 1 | ((z >> i) & 1)
                r |= ((lut >> idx) & 1) << i
            f.case([x, y, z], [r])
        forms.append(f)
    # selp and predicate logic.
    for bits in (16, 32, 64):
        c = cls_of(bits)
        f = Form(f"selp.b{bits}", f"selp.b{bits} {{d}}, {{a}}, {{b}}, {{c}};", [c, c, "pred"], [c])
        for x, y in zip(rand_ints(rng, bits, 8), rand_ints(rng, bits, 8)):
            for p in (0, 1):
                f.case([x, y, p], [x if p else y])
        forms.append(f)
    for op in ("and", "or", "xor"):
        f = Form(f"{op}.pred", f"{op}.pred {{d}}, {{a}}, {{b}};", ["pred", "pred"], ["pred"])
        for x, y in pairs((0, 1), (0, 1)):
            f.case([x, y], [{"and": x & y, "or": x | y, "xor": x ^ y}[op]])
        forms.append(f)
    f = Form("setp.and.lt.s32", "setp.lt.and.s32 {d}|{q}, {a}, {b}, !{c};", ["b32", "b32", "pred"], ["pred", "pred"])
    for x, y in pairs(int_edges(32)[::4], int_edges(32)[1::4]):
        for p in (0, 1):
            r = R.signed(x, 32) < R.signed(y, 32)
            f.case([x, y, p], [int(r and not p), int((not r) and not p)])
    forms.append(f)
    return forms


def bfe_ref(x, pos, ln, bits, sg):
    pos, ln = pos & 0xff, ln & 0xff
    msb = bits - 1
    sbit = 0 if (not sg or ln == 0) else ((x >> min(pos + ln - 1, msb)) & 1)
    r = 0
    for i in range(bits):
        bit = ((x >> (pos + i)) & 1) if (i < ln and pos + i <= msb) else sbit
        r |= bit << i
    return r


def bfi_ref(f_, b, pos, ln, bits):
    pos, ln = pos & 0xff, ln & 0xff
    r = b
    for i in range(ln):
        if pos + i > bits - 1:
            break
        r = (r & ~(1 << (pos + i))) | (((f_ >> i) & 1) << (pos + i))
    return r & ((1 << bits) - 1)


def move_forms(rng):
    forms = []
    # Pack and unpack (nvcc's __halves2half2, __low2float, __high2float; 64-bit halves).
    f = Form("mov.b32.unpack", "mov.b32 {{{d}, {q}}}, {a};", ["b32"], ["b16", "b16"])
    for x in int_edges(32) + [0x40003C00]:
        f.case([x], [x & 0xffff, x >> 16])
    forms.append(f)
    f = Form("mov.b32.unpack.sink_low", "mov.b32 {{_, {d}}}, {a};", ["b32"], ["b16"])
    for x in int_edges(32) + [0x40003C00]:
        f.case([x], [x >> 16])
    forms.append(f)
    f = Form("mov.b32.unpack.sink_high", "mov.b32 {{{d}, _}}, {a};", ["b32"], ["b16"])
    for x in int_edges(32) + [0x40003C00]:
        f.case([x], [x & 0xffff])
    forms.append(f)
    f = Form("mov.b32.pack", "mov.b32 {d}, {{{a}, {b}}};", ["b16", "b16"], ["b32"])
    for x, y in pairs(int_edges(16)[::3], int_edges(16)[1::3]):
        f.case([x, y], [x | y << 16])
    forms.append(f)
    f = Form("mov.b64.unpack", "mov.b64 {{{d}, {q}}}, {a};", ["b64"], ["b32", "b32"])
    for x in int_edges(64):
        f.case([x], [x & 0xffffffff, x >> 32])
    forms.append(f)
    f = Form("mov.b64.pack", "mov.b64 {d}, {{{a}, {b}}};", ["b32", "b32"], ["b64"])
    for x, y in pairs(int_edges(32)[::3], int_edges(32)[1::3]):
        f.case([x, y], [x | y << 32])
    forms.append(f)
    f = Form("mov.b64.unpack4", "mov.b64 {{{d}, {q}, {d2}, {d3}}}, {a};", ["b64"], ["b16"] * 4)
    for x in int_edges(64):
        f.case([x], [(x >> s) & 0xffff for s in (0, 16, 32, 48)])
    forms.append(f)
    f = Form("mov.b64.pack4", "mov.b64 {d}, {{{a}, {b}, {c}, {e}}};", ["b16"] * 4, ["b64"])
    for vals in zip(*(rand_ints(rng, 16, 12) for _ in range(4))):
        f.case(list(vals), [sum(v << (16 * i) for i, v in enumerate(vals))])
    forms.append(f)
    # cuda_fp16.hpp's inline asm: a scoped block reusing names, as __high2half writes it.
    f = Form("mov.b32.unpack.scoped", "{{ .reg .f16 low, high;\n  mov.b32 {{low, high}}, {a};\n  mov.b16 {d}, high; }}", ["b32"], ["b16"])
    for x in int_edges(32) + [0x40003C00]:
        f.case([x], [x >> 16])
    forms.append(f)
    return forms


LD_TYPES = [("u8", 8, False), ("s8", 8, True), ("u16", 16, False), ("s16", 16, True), ("u32", 32, False), ("s32", 32, True),
            ("u64", 64, False), ("s64", 64, True), ("b8", 8, False), ("b16", 16, False), ("b32", 32, False), ("b64", 64, False),
            ("f32", 32, False), ("f64", 64, False)]


def memory_forms(rng):
    forms = []
    for ty, bits, sg in LD_TYPES:
        for rc in ("b16", "b32", "b64"):
            if WIDTH[rc] < max(bits, 16) or (ty[0] == "f" and WIDTH[rc] != bits):
                continue
            # A load into a wider register: sign-extended for signed types, zero-extended else.
            f = Form(f"ld.global.{ty}.{rc}", f"ld.global.{ty} {{d}}, [{{a}}];", ["mem"], [rc])
            for x in int_edges(64) + rand_ints(rng, 64, 8):
                r = R.wrap(R.int_value(x, bits, sg), WIDTH[rc])
                f.case([x], [r])
            forms.append(f)
            # A store of the low bits of a wider register; the rest of the slot is untouched.
            f = Form(f"st.global.{ty}.{rc}", f"st.global.{ty} [{{d}}], {{a}};", [rc], ["mem"])
            for x in int_edges(WIDTH[rc]) + rand_ints(rng, WIDTH[rc], 8):
                keep = (2**64 - 1) ^ ((1 << bits) - 1)
                f.case([x], [(0xA5A5A5A5A5A5A5A5 & keep) | (x & ((1 << bits) - 1))])
            forms.append(f)
    # Vector loads of narrow signed elements.
    f = Form("ld.global.v2.s8.b16", "ld.global.v2.s8 {{{d}, {q}}}, [{a}];", ["mem"], ["b16", "b16"])
    for x in int_edges(16) + rand_ints(rng, 16, 8):
        f.case([x], [R.wrap(R.signed(x, 8), 16), R.wrap(R.signed(x >> 8, 8), 16)])
    forms.append(f)
    f = Form("ld.global.v4.s16.b32", "ld.global.v4.s16 {{{d}, {q}, {d2}, {d3}}}, [{a}];", ["mem"], ["b32"] * 4)
    for x in int_edges(64) + rand_ints(rng, 64, 8):
        f.case([x], [R.wrap(R.signed(x >> (16 * i), 16), 32) for i in range(4)])
    forms.append(f)
    return forms


INT_CVT = [("u8", 8, False), ("s8", 8, True), ("u16", 16, False), ("s16", 16, True), ("u32", 32, False), ("s32", 32, True),
           ("u64", 64, False), ("s64", 64, True)]


def conversion_forms(rng):
    forms = []
    # Integer to integer: truncation or extension (by the source type), .sat clamps; the
    # destination register (at least 16 bits) gets the result extended by the destination type.
    for dty, dbits, dsg in INT_CVT:
        for sty, sbits, ssg in INT_CVT:
            if dty == sty:
                continue
            for sat in (False, True):
                dc, sc = cls_of(max(dbits, 16)), cls_of(max(sbits, 16))
                name = f"cvt{'.sat' if sat else ''}.{dty}.{sty}"
                f = Form(name, f"{name} {{d}}, {{a}};", [sc], [dc])
                for x in int_edges(WIDTH[sc]) + rand_ints(rng, WIDTH[sc], 6):
                    n = R.int_value(x, sbits, ssg)
                    r = R.clamp_int(n, dbits, dsg) if sat else R.wrap(n, dbits)
                    f.case([x], [R.wrap(R.int_value(r, dbits, dsg), WIDTH[dc])])
                forms.append(f)
    fmts = [("f16", F16), ("bf16", BF16), ("f32", F32), ("f64", F64)]
    # Float to integer: rni/rzi/rmi/rpi, saturating, NaN to 0.
    for fname, f_ in fmts:
        if fname == "bf16":
            continue
        fc = cls_of(f_.bits)
        for ity, ibits, isg in INT_CVT:
            if ibits == 8:
                continue
            for mode in ("rni", "rzi", "rmi", "rpi"):
                name = f"cvt.{mode}.{ity}.{fname}"
                f = Form(name, f"{name} {{d}}, {{a}};", [fc], [cls_of(ibits)])
                for x in float_edges(f_) + rand_floats(rng, f_, 24) + big_floats(f_):
                    f.case([x], [R.wrap(R.int_value(R.float_to_int(x, f_, ibits, isg, mode[:2]), ibits, isg), ibits)])
                forms.append(f)
            # Integer to float: rn/rz/rm/rp.
            for mode in ("rn", "rz", "rm", "rp"):
                name = f"cvt.{mode}.{fname}.{ity}"
                f = Form(name, f"{name} {{d}}, {{a}};", [cls_of(ibits)], [fc], [{"bits": f_.bits, "float": fname}])
                for x in int_edges(ibits) + rand_ints(rng, ibits, 24):
                    f.case([x], [R.int_to_float(x, ibits, isg, f_, mode)])
                forms.append(f)
    # Float to float.
    for dname, df in fmts:
        for sname, sf in fmts:
            if dname == sname:
                # Round to an integral value in the same format.
                if dname in ("f32", "f64"):
                    for mode in ("rni", "rzi", "rmi", "rpi"):
                        name = f"cvt.{mode}.{dname}.{sname}"
                        f = Form(name, f"{name} {{d}}, {{a}};", [cls_of(sf.bits)], [cls_of(df.bits)], [{"bits": df.bits, "float": dname}])
                        for x in float_edges(sf) + rand_floats(rng, sf, 24):
                            f.case([x], [R.round_to_integral(x, sf, mode[:2])])
                        forms.append(f)
                continue
            narrowing = df.bits < sf.bits or (dname, sname) in (("bf16", "f16"), ("f16", "bf16"))
            modes = ("rn", "rz", "rm", "rp") if narrowing else ("",)
            for mode in modes:
                if ("bf16" in (dname, sname) and "f16" in (dname, sname)):
                    continue  # no such cvt in PTX
                for sat in ((False, True) if dname in ("f32", "f64") or dname in ("f16",) else (False,)):
                    name = "cvt" + (f".{mode}" if mode else "") + (".sat" if sat else "") + f".{dname}.{sname}"
                    f = Form(name, f"{name} {{d}}, {{a}};", [cls_of(sf.bits)], [cls_of(df.bits)], [{"bits": df.bits, "float": dname}])
                    for x in float_edges(sf) + rand_floats(rng, sf, 32):
                        f.case([x], [R.float_to_float(x, sf, df, mode or "rn", sat=sat)])
                    forms.append(f)
    # Packing two f32 into f16x2 / bf16x2: the first source goes to the upper half.
    for hname, hf in (("f16x2", F16), ("bf16x2", BF16)):
        name = f"cvt.rn.{hname}.f32"
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"], [{"bits": 32, "lanes": hf.name}])
        for x, y in zip(float_edges(F32) + rand_floats(rng, F32, 8), rand_floats(rng, F32, 48)):
            f.case([x, y], [[R.float_to_float(y, F32, hf, "rn"), R.float_to_float(x, F32, hf, "rn")]])
        forms.append(f)
    return forms


def big_floats(f):
    """Values beyond every integer range, to check saturation."""
    return [R.encode(s, Fraction(2) ** e, f) for s in (0, 1) for e in (15, 16, 31, 32, 63, 64, 100) if Fraction(2) ** e <= f.max_finite]


def float_forms(rng):
    forms = []
    for fname, f_ in (("f32", F32), ("f64", F64)):
        c = cls_of(f_.bits)
        chk = [{"bits": f_.bits, "float": fname}]
        edges = float_edges(f_)
        two = pairs(edges, edges[::3]) + list(zip(rand_floats(rng, f_, 64), rand_floats(rng, f_, 64)))
        three = [(x, y, z) for (x, y), z in zip(two, (edges * 40)[::7])]
        ftzs = (False, True) if fname == "f32" else (False,)
        for mode in ("rn", "rz", "rm", "rp"):
            for ftz in ftzs:
                mods = f".{mode}" + (".ftz" if ftz else "")
                for op in ("add", "sub", "mul", "div"):
                    name = f"{op}{mods}.{fname}"
                    f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", [c, c], [c], chk)
                    for x, y in two:
                        r = (R.add(x, y, f_, mode, ftz) if op == "add" else R.add(x, y, f_, mode, ftz, sub=True) if op == "sub"
                             else R.mul(x, y, f_, mode, ftz) if op == "mul" else R.div(x, y, f_, mode, ftz))
                        f.case([x, y], [r])
                    forms.append(f)
                for op in ("fma", "mad"):  # mad with a rounding mode is fma
                    name = f"{op}{mods}.{fname}"
                    f = Form(name, f"{name} {{d}}, {{a}}, {{b}}, {{c}};", [c, c, c], [c], chk)
                    for x, y, z in three:
                        f.case([x, y, z], [R.fma(x, y, z, f_, mode, ftz)])
                    forms.append(f)
                for op, fn in (("sqrt", R.sqrt), ("rcp", R.rcp)):
                    name = f"{op}{mods}.{fname}"
                    f = Form(name, f"{name} {{d}}, {{a}};", [c], [c], chk)
                    for x in edges + rand_floats(rng, f_, 32):
                        f.case([x], [fn(x, f_, mode, ftz)])
                    forms.append(f)
        if fname == "f32":
            for op in ("add", "mul"):
                name = f"{op}.sat.f32"
                f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", [c, c], [c], chk)
                for x, y in two:
                    f.case([x, y], [R.add(x, y, f_, sat=True) if op == "add" else R.mul(x, y, f_, sat=True)])
                forms.append(f)
        for op in ("min", "max"):
            for nan in (False, True):
                if nan and fname == "f64":
                    continue  # min.NaN is f32/f16 only
                name = f"{op}{'.NaN' if nan else ''}.{fname}"
                f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", [c, c], [c], chk)
                for x, y in two:
                    f.case([x, y], [R.minmax(x, y, f_, op == "max", nan)])
                forms.append(f)
        sign = 1 << (f_.bits - 1)
        # A mul and an add/sub with no rounding modifier: ptxas fuses them into one fma by default
        # (the PTX ISA allows it; NVVM writes contractable operations this way), so a GPU rounds
        # once. The sim fuses them the same way (parse::contract_mul_add); the .rn pair is never
        # fused. 255.6 - 213 * 1.2 is 3.8e-15 fused and 0 rounded twice (CuPy's mod). The
        # golden file of a GPU settles whether ptxas fuses as assumed here.
        t = f".reg .b{f_.bits} %ct;"
        bits_of = (lambda v: struct.unpack("<Q", struct.pack("<d", v))[0]) if fname == "f64" else (lambda v: struct.unpack("<I", struct.pack("<f", v))[0])
        boundary = [tuple(map(bits_of, (213.0, 1.2, 255.6) if fname == "f64" else (11.3, 0.7, 8.1)))]
        for name, text, ref in (
            (f"mul+sub.{fname} (contracted)", f"mul.{fname} %ct, {{a}}, {{b}};\nsub.{fname} {{d}}, {{c}}, %ct;", lambda x, y, z: R.fma(x ^ sign, y, z, f_)),
            (f"mul+add.{fname} (contracted)", f"mul.{fname} %ct, {{a}}, {{b}};\nadd.{fname} {{d}}, %ct, {{c}};", lambda x, y, z: R.fma(x, y, z, f_)),
            (f"mul.rn+sub.rn.{fname} (not contracted)", f"mul.rn.{fname} %ct, {{a}}, {{b}};\nsub.rn.{fname} {{d}}, {{c}}, %ct;", lambda x, y, z: (lambda p: NAN if p == NAN else R.add(z, p, f_, sub=True))(R.mul(x, y, f_))),
        ):
            f = Form(name, text, [c, c, c], [c], chk, decls=t)
            for x, y, z in boundary + three:
                f.case([x, y, z], [ref(x, y, z)])
            forms.append(f)
        # A product read by two adds: the sim fuses each (as LLVM's NVPTX backend does with
        # aggressive fusion); whether ptxas does too is for the golden file to say.
        f = Form(f"mul+sub+add.{fname} (product read twice, contracted)", f"mul.{fname} %ct, {{a}}, {{b}};\nsub.{fname} {{d}}, {{c}}, %ct;\nadd.{fname} {{q}}, %ct, {{c}};", [c, c, c], [c, c], chk * 2, decls=t)
        for x, y, z in boundary + three:
            f.case([x, y, z], [R.fma(x ^ sign, y, z, f_), R.fma(x, y, z, f_)])
        forms.append(f)
        for op, fn in (("neg", lambda x: x ^ sign), ("abs", lambda x: x & (sign - 1))):
            name = f"{op}.{fname}"
            # Sign-bit operations; a NaN's payload is left to the golden file.
            f = Form(name, f"{name} {{d}}, {{a}};", [c], [c], chk)
            for x in edges:
                f.case([x], [NAN if R.is_nan(x, f_) else fn(x)])
            forms.append(f)
        for cmp in ("eq", "ne", "lt", "le", "gt", "ge", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan"):
            name = f"setp.{cmp}.{fname}"
            f = Form(name, f"{name} {{d}}|{{q}}, {{a}}, {{b}};", [c, c], ["pred", "pred"])
            for x, y in two:
                r = R.compare(cmp, x, y, f_)
                f.case([x, y], [int(r), int(not r)])
            forms.append(f)
    # Half precision, scalar and packed.
    for hname, hf in (("f16", F16), ("bf16", BF16)):
        edges = float_edges(hf)
        two = pairs(edges, edges[::3]) + list(zip(rand_floats(rng, hf, 48), rand_floats(rng, hf, 48)))
        chk = [{"bits": 16, "float": hname}]
        ops = (("add", lambda x, y: R.add(x, y, hf)), ("sub", lambda x, y: R.add(x, y, hf, sub=True)), ("mul", lambda x, y: R.mul(x, y, hf)),
               ("min", lambda x, y: R.minmax(x, y, hf, False)), ("max", lambda x, y: R.minmax(x, y, hf, True)))
        for op, fn in ops:
            rn = ".rn" if op in ("add", "sub", "mul") else ""
            name = f"{op}{rn}.{hname}"
            f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b16", "b16"], ["b16"], chk)
            for x, y in two:
                f.case([x, y], [fn(x, y)])
            forms.append(f)
            name2 = f"{op}{rn}.{hname}x2"
            f = Form(name2, f"{name2} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"], [{"bits": 32, "lanes": hname}])
            for (x, y), (x2, y2) in zip(two, two[7:] + two[:7]):
                f.case([x | x2 << 16, y | y2 << 16], [[fn(x, y), fn(x2, y2)]])
            forms.append(f)
        name = f"fma.rn.{hname}"
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}}, {{c}};", ["b16"] * 3, ["b16"], chk)
        for (x, y), z in zip(two, (edges * 20)[::5]):
            f.case([x, y, z], [R.fma(x, y, z, hf)])
        forms.append(f)
        for cmp in ("eq", "ne", "lt", "le", "gt", "ge", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan"):
            name = f"setp.{cmp}.{hname}"
            f = Form(name, f"{name} {{d}}|{{q}}, {{a}}, {{b}};", ["b16", "b16"], ["pred", "pred"])
            for x, y in two:
                r = R.compare(cmp, x, y, hf)
                f.case([x, y], [int(r), int(not r)])
            forms.append(f)
        for op, fn in (("neg", lambda x: x ^ 0x8000), ("abs", lambda x: x & 0x7fff)):
            name = f"{op}.{hname}"
            f = Form(name, f"{name} {{d}}, {{a}};", ["b16"], ["b16"], chk)
            for x in edges:
                f.case([x], [NAN if R.is_nan(x, hf) else fn(x)])
            forms.append(f)
    return forms


def new_instruction_forms(rng):
    """Instructions the issue lists as used by llama.cpp, numba and CuPy."""
    forms = []
    # prmt.b32: each selector nibble picks a byte of {b, a}; bit 3 replicates its sign (default mode).
    f = Form("prmt.b32", "prmt.b32 {d}, {a}, {b}, {c};", ["b32"] * 3, ["b32"])
    for x, y, s in zip(rand_ints(rng, 32, 32), rand_ints(rng, 32, 32), [0x3210, 0x7654, 0x0123, 0x4444, 0x8888, 0xba98, 0xffff, 0x5140] * 4):
        bs = [(x >> (8 * i)) & 0xff for i in range(4)] + [(y >> (8 * i)) & 0xff for i in range(4)]
        r = 0
        for i in range(4):
            sel = (s >> (4 * i)) & 0xf
            byte = bs[sel & 7]
            if sel & 8:
                byte = 0xff if byte & 0x80 else 0
            r |= byte << (8 * i)
        f.case([x, y, s], [r])
    forms.append(f)
    # prmt's other modes: the selector's low two bits pick a row of the ISA's table (bytes of
    # {b, a} numbered 0..7, listed for d.b3 d.b2 d.b1 d.b0).
    table = {
        "f4e": ["3210", "4321", "5432", "6543"], "b4e": ["5670", "6701", "7012", "0123"],
        "rc8": ["0000", "1111", "2222", "3333"], "ecl": ["3210", "3211", "3222", "3333"],
        "ecr": ["0000", "1110", "2210", "3210"], "rc16": ["1010", "3232", "1010", "3232"],
    }
    for mode, rows in table.items():
        f = Form(f"prmt.b32.{mode}", f"prmt.b32.{mode} {{d}}, {{a}}, {{b}}, {{c}};", ["b32"] * 3, ["b32"])
        for x, y in zip(rand_ints(rng, 32, 8), rand_ints(rng, 32, 8)):
            for sel in (0, 1, 2, 3, 0x7, 0xfffffffe):
                bs = [(x >> (8 * i)) & 0xff for i in range(4)] + [(y >> (8 * i)) & 0xff for i in range(4)]
                row = rows[sel & 3]
                r = sum(bs[int(row[3 - i])] << (8 * i) for i in range(4))
                f.case([x, y, sel], [r])
        forms.append(f)
    # dp4a / dp2a: four (two) byte products summed into a 32-bit accumulator.
    for at, bt in (("u32", "u32"), ("s32", "s32"), ("s32", "u32"), ("u32", "s32")):
        f = Form(f"dp4a.{at}.{bt}", f"dp4a.{at}.{bt} {{d}}, {{a}}, {{b}}, {{c}};", ["b32"] * 3, ["b32"])
        for x, y, z in zip(rand_ints(rng, 32, 24) + [0x80808080, 0x7f7f7f7f], rand_ints(rng, 32, 24) + [0x80808080, 0xffffffff], rand_ints(rng, 32, 26)):
            acc = R.int_value(z, 32, at[0] == "s" or bt[0] == "s")
            for i in range(4):
                acc += R.int_value(x >> (8 * i), 8, at[0] == "s") * R.int_value(y >> (8 * i), 8, bt[0] == "s")
            f.case([x, y, z], [R.wrap(acc, 32)])
        forms.append(f)
        for hl in ("lo", "hi"):
            f = Form(f"dp2a.{hl}.{at}.{bt}", f"dp2a.{hl}.{at}.{bt} {{d}}, {{a}}, {{b}}, {{c}};", ["b32"] * 3, ["b32"])
            for x, y, z in zip(rand_ints(rng, 32, 24), rand_ints(rng, 32, 24), rand_ints(rng, 32, 24)):
                acc = R.int_value(z, 32, at[0] == "s" or bt[0] == "s")
                base = 0 if hl == "lo" else 2
                for i in range(2):
                    acc += R.int_value(x >> (16 * i), 16, at[0] == "s") * R.int_value(y >> (8 * (base + i)), 8, bt[0] == "s")
                f.case([x, y, z], [R.wrap(acc, 32)])
            forms.append(f)
    # copysign: d = b with the sign of a.
    for fname, f_ in (("f32", F32), ("f64", F64)):
        c = cls_of(f_.bits)
        sign = 1 << (f_.bits - 1)
        f = Form(f"copysign.{fname}", f"copysign.{fname} {{d}}, {{a}}, {{b}};", [c, c], [c])
        for x, y in pairs(float_edges(f_)[::4], float_edges(f_)[1::4]):
            f.case([x, y], [(y & ~sign) | (x & sign)])
        forms.append(f)
    # bfind: the position of the most significant non-sign bit, 0xffffffff if none; .shiftamt: its
    # distance from the top.
    for ty, bits, sg in (("u32", 32, False), ("s32", 32, True), ("u64", 64, False), ("s64", 64, True)):
        for shift in (False, True):
            name = f"bfind{'.shiftamt' if shift else ''}.{ty}"
            f = Form(name, f"{name} {{d}}, {{a}};", [cls_of(bits)], ["b32"])
            for x in int_edges(bits) + rand_ints(rng, bits, 16):
                v = x
                if sg and (x >> (bits - 1)) & 1:
                    v = ~x & ((1 << bits) - 1)
                pos = v.bit_length() - 1 if v else -1
                r = 0xffffffff if pos < 0 else ((bits - 1 - pos) if shift else pos)
                f.case([x], [r])
            forms.append(f)
    # sad: |a - b| + c.
    for ty, bits, sg in (("u32", 32, False), ("s32", 32, True), ("u16", 16, False), ("s16", 16, True)):
        c = cls_of(bits)
        f = Form(f"sad.{ty}", f"sad.{ty} {{d}}, {{a}}, {{b}}, {{c}};", [c, c, c], [c])
        for x, y, z in zip(int_edges(bits) + rand_ints(rng, bits, 16), rand_ints(rng, bits, 40), rand_ints(rng, bits, 40)):
            f.case([x, y, z], [R.wrap(abs(R.int_value(x, bits, sg) - R.int_value(y, bits, sg)) + z, bits)])
        forms.append(f)
    # set: a comparison written as a value (all ones or 1.0f).
    for cmp in ("lt", "eq", "nan", "gtu"):
        for dty in ("u32", "f32"):
            name = f"set.{cmp}.{dty}.f32"
            f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"])
            for x, y in pairs(float_edges(F32)[::3], float_edges(F32)[1::3]):
                r = R.compare(cmp, x, y, F32)
                f.case([x, y], [(0xffffffff if dty == "u32" else 0x3f800000) if r else 0])
            forms.append(f)
    # set with f16 results (CuPy's float16 min/max): 1.0 or 0.0 in each half.
    for cmp in ("lt", "nan", "gtu"):
        name = f"set.{cmp}.f16.f16"
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b16", "b16"], ["b16"])
        for x, y in pairs(float_edges(F16)[::3], float_edges(F16)[1::3]):
            f.case([x, y], [0x3c00 if R.compare(cmp, x, y, F16) else 0])
        forms.append(f)
    # Packed half comparisons: setp gives one predicate per half, set one value per half.
    for hname, hf, one in (("f16x2", F16, 0x3c00), ("bf16x2", BF16, 0x3f80)):
        pairs16 = pairs(float_edges(hf)[::2], float_edges(hf)[1::2])
        for cmp in ("lt", "equ", "nan", "ge"):
            f = Form(f"setp.{cmp}.{hname}", f"setp.{cmp}.{hname} {{d}}|{{q}}, {{a}}, {{b}};", ["b32", "b32"], ["pred", "pred"])
            for (x, y), (x2, y2) in zip(pairs16, pairs16[5:] + pairs16[:5]):
                f.case([x | x2 << 16, y | y2 << 16], [int(R.compare(cmp, x, y, hf)), int(R.compare(cmp, x2, y2, hf))])
            forms.append(f)
            for dty, val in ((hname, one), ("u32", 0xffff)):
                name = f"set.{cmp}.{dty}.{hname}"
                f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"])
                for (x, y), (x2, y2) in zip(pairs16, pairs16[5:] + pairs16[:5]):
                    lo = val if R.compare(cmp, x, y, hf) else 0
                    hi = val if R.compare(cmp, x2, y2, hf) else 0
                    f.case([x | x2 << 16, y | y2 << 16], [lo | hi << 16])
                forms.append(f)
    return forms


def collective_forms(rng):
    """Instructions whose result depends on other threads: a case is a thread, and the cases of
    one warp (32) or block (128, the runners' block size) are computed together."""
    forms = []
    block = 128
    for op in ("popc", "and", "or"):
        out = "b32" if op == "popc" else "pred"
        name = f"bar.red.{op}.{'u32' if op == 'popc' else 'pred'}"
        f = Form(name, f"{name} {{d}}, 0, {{a}};", ["pred"], [out])
        for density in (0.5, 1.0, 0.0, 0.02):
            ps = [int(rng.random() < density) for _ in range(block)]
            r = sum(ps) if op == "popc" else int(all(ps)) if op == "and" else int(any(ps))
            for p in ps:
                f.case([p], [r])
        forms.append(f)
    for ty, bits in (("b32", 32), ("b64", 64)):
        c = cls_of(bits)
        fa = Form(f"match.any.sync.{ty}", f"match.any.sync.{ty} {{d}}, {{a}}, 0xffffffff;", [c], ["b32"])
        fl = Form(f"match.all.sync.{ty}", f"match.all.sync.{ty} {{d}}|{{q}}, {{a}}, 0xffffffff;", [c], ["b32", "pred"])
        for kinds in (3, 1, 32, 2):
            pool = rand_ints(rng, bits, kinds)
            warp = [pool[rng.randrange(kinds)] for _ in range(32)]
            for v in warp:
                fa.case([v], [sum(1 << j for j, w in enumerate(warp) if w == v)])
                same = all(w == warp[0] for w in warp)
                fl.case([v], [0xffffffff if same else 0, int(same)])
        forms += [fa, fl]
    # isspacep on generic addresses of a shared, a global and a local variable.
    f = Form("isspacep", "{{ .reg .pred %s0, %s2;\n  .reg .b64 %as, %al, %ax;\n  mov.u64 %as, sbuf;\n  cvta.shared.u64 %as, %as;\n"
             "  mov.u64 %al, lbuf;\n  cvta.local.u64 %al, %al;\n  setp.eq.b32 %s0, {a}, 0;\n  setp.eq.b32 %s2, {a}, 2;\n"
             "  selp.b64 %ax, %as, %in, %s0;\n  selp.b64 %ax, %al, %ax, %s2;\n"
             "  isspacep.shared {d}, %ax;\n  isspacep.global {q}, %ax;\n  isspacep.local {d2}, %ax; }}",
             ["b32"], ["pred", "pred", "pred"], decls=".shared .align 8 .b8 sbuf[64];\n.local .align 8 .b8 lbuf[8];")
    for sel in (0, 1, 2) * 4:
        f.case([sel], [int(sel == 0), int(sel == 1), int(sel == 2)])
    forms.append(f)
    # cp.async from global to shared, with a source size below the copy size zero-filling.
    for kind, size in (("ca", 4), ("ca", 8), ("ca", 16), ("cg", 16)):
        src = ", {c}" if kind == "cg" else ""
        f = Form(f"cp.async.{kind}.{size}", "{{ .reg .b32 %o, %t;\n  mov.u32 %t, %tid.x;\n  mul.lo.u32 %t, %t, 16;\n  mov.u32 %o, cbuf;\n"
                 "  add.u32 %o, %o, %t;\n  st.shared.v2.b64 [%o], {{%out, %out}};\n"
                 f"  cp.async.{kind}.shared.global [%o], [%in], {size}{src};\n  cp.async.commit_group;\n  cp.async.wait_group 0;\n"
                 "  bar.sync 0;\n  ld.shared.v2.b64 {{{d}, {q}}}, [%o]; }}",
                 ["mem", "mem", "b32"], ["b64", "b64"], decls=".shared .align 16 .b8 cbuf[2048];")
        for k in range(block):
            lo, hi = rng.getrandbits(64), rng.getrandbits(64)
            n = rng.choice((0, 3, 8, 11, 16)) if kind == "cg" else size
            data = (lo | hi << 64) & ((1 << (8 * n)) - 1)
            # Bytes past the copy keep what was stored there first: the output pointer (%out),
            # which the expected value cannot know, so only copied bytes are compared.
            f.case([lo, hi, n], [data & (2**64 - 1) if n >= 8 else None, (data >> 64) if n == 16 else None])
        forms.append(f)
    f = Form("mov.u32.WARP_SZ", "mov.u32 {d}, WARP_SZ;", [], ["b32"])
    f.case([], [32])
    forms.append(f)
    f = Form("ld.shared::cta.u32", "{{ .reg .b32 %o;\n  mov.u32 %o, wbuf;\n  st.shared::cta.u32 [%o], {a};\n  ld.shared::cta.u32 {d}, [%o]; }}",
             ["b32"], ["b32"], decls=".shared .align 4 .b8 wbuf[4];")
    for x in rand_ints(rng, 32, 1):
        f.case([x], [x])
    forms.append(f)
    return forms


def mma_layout(shape, kind):
    """Per lane, the (row, col) of each element it holds of A, B (as (k, n)) and C/D, in register
    order, from the PTX ISA's fragment figures for mma.sync (g = lane / 4, t = lane % 4)."""
    def a(l):
        g, t = l // 4, l % 4
        if shape == "m16n8k16" and kind in ("f16", "bf16"):
            return [(g + 8 * ((i // 2) % 2), 2 * t + i % 2 + 8 * (i // 4)) for i in range(8)]
        if shape == "m16n8k8" and kind in ("f16", "bf16"):
            return [(g + 8 * (i // 2), 2 * t + i % 2) for i in range(4)]
        if shape == "m16n8k8" and kind == "tf32":
            return [(g + 8 * (i % 2), t + 4 * (i // 2)) for i in range(4)]
        if shape == "m16n8k32":
            return [(g + 8 * ((i // 4) % 2), 4 * t + i % 4 + 16 * (i // 8)) for i in range(16)]
        if shape == "m16n8k16":
            return [(g + 8 * (i // 4), 4 * t + i % 4) for i in range(8)]
        if shape == "m8n8k16":
            return [(g, 4 * t + i) for i in range(4)]
        if shape == "m8n8k4":
            return [(g, t)]
        raise ValueError(shape)

    def b(l):
        g, t = l // 4, l % 4
        if shape == "m16n8k16" and kind in ("f16", "bf16"):
            return [(2 * t + i % 2 + 8 * (i // 2), g) for i in range(4)]
        if shape == "m16n8k8" and kind in ("f16", "bf16"):
            return [(2 * t + i, g) for i in range(2)]
        if shape == "m16n8k8" and kind == "tf32":
            return [(t + 4 * i, g) for i in range(2)]
        if shape == "m16n8k32":
            return [(4 * t + i % 4 + 16 * (i // 4), g) for i in range(8)]
        if shape in ("m16n8k16", "m8n8k16"):
            return [(4 * t + i, g) for i in range(4)]
        if shape == "m8n8k4":
            return [(t, g)]
        raise ValueError(shape)

    def c(l):
        g, t = l // 4, l % 4
        if shape.startswith("m8n8"):
            return [(g, 2 * t + i) for i in range(2)]
        return [(g + 8 * (i // 2), 2 * t + i % 2) for i in range(4)]
    return a, b, c


def pack(vals, width):
    """Elements of `width` bits into 32-bit registers (64-bit for f64), first element lowest."""
    per = max(1, 32 // width)
    return [sum((v & ((1 << width) - 1)) << (width * j) for j, v in enumerate(vals[i:i + per])) for i in range(0, len(vals), per)]


def matrix_forms(rng):
    forms = []
    # ldmatrix: lanes store 16-byte rows to shared memory, then name rows (of their warp) by index.
    # (And with a generic address, the instruction naming no state space, as ggml writes it.)
    for num, trans, generic in [(n, t, False) for n in (1, 2, 4) for t in (False, True)] + [(4, False, True), (2, True, True)]:
        outs = ", ".join(f"{{o{i}}}" for i in range(num))
        name = f"ldmatrix.sync.aligned.m8n8.x{num}{'.trans' if trans else ''}{'' if generic else '.shared'}.b16"
        addr = "  cvt.u64.u32 %ag, %ad;\n  cvta.shared.u64 %ag, %ag;\n" if generic else ""
        text = ("{{ .reg .b32 %t, %w, %o, %ad;\n  .reg .b64 %ag;\n  mov.u32 %t, %tid.x;\n  mov.u32 %o, lmbuf;\n  mad.lo.u32 %ad, %t, 16, %o;\n"
                "  st.shared.v2.b64 [%ad], {{{i0}, {i1}}};\n  and.b32 %w, %t, 0xffffffe0;\n  add.u32 %w, %w, {i2};\n"
                "  mad.lo.u32 %ad, %w, 16, %o;\n  bar.warp.sync 0xffffffff;\n" + addr +
                f"  {name} {{{{{outs}}}}}, [{'%ag' if generic else '%ad'}]; }}}}")
        f = Form(name, text, ["b64", "b64", "b32"], ["b32"] * num, decls=".shared .align 16 .b8 lmbuf[2048];")
        for _ in range(4):
            rows = [(rng.getrandbits(64), rng.getrandbits(64)) for _ in range(32)]
            sel = list(range(32))
            rng.shuffle(sel)
            data = [lo | hi << 64 for lo, hi in rows]
            elem = lambda m, r, c: (data[sel[8 * m + r]] >> (16 * c)) & 0xffff
            for l in range(32):
                outv = []
                for m in range(num):
                    if trans:
                        lo, hi = elem(m, 2 * (l % 4), l // 4), elem(m, 2 * (l % 4) + 1, l // 4)
                    else:
                        lo, hi = elem(m, l // 4, 2 * (l % 4)), elem(m, l // 4, 2 * (l % 4) + 1)
                    outv.append(lo | hi << 16)
                f.case([rows[l][0], rows[l][1], sel[l]], outv)
        forms.append(f)
    # mma.sync: a warp's fragments of A, B, C; D = A * B + C. Integer results are exact; float
    # ones are the exact sum rounded once, within the accumulation error the ISA allows (the
    # tensor cores' internal order and precision are not specified).
    shapes = [("m16n8k16", "f16", "f32"), ("m16n8k8", "f16", "f32"), ("m16n8k16", "bf16", "f32"), ("m16n8k8", "bf16", "f32"),
              ("m16n8k8", "tf32", "f32"), ("m16n8k16", "f16", "f16"), ("m16n8k32", "s8", "s32"), ("m16n8k32", "u8", "s32"),
              ("m16n8k16", "s8", "s32"), ("m8n8k16", "s8", "s32"), ("m8n8k16", "u8", "s32"), ("m8n8k4", "f64", "f64")]
    fmt = {"f16": F16, "bf16": BF16, "tf32": F32, "f32": F32, "f64": F64}
    for shape, kind, acc in shapes:
        la, lb, lc = mma_layout(shape, kind)
        width = {"f16": 16, "bf16": 16, "tf32": 32, "s8": 8, "u8": 8, "f64": 64}[kind]
        cw = {"f32": 32, "s32": 32, "f16": 16, "f64": 64}[acc]
        rcls = "b64" if kind == "f64" else "b32"
        na, nb, nc = (len(pack([0] * len(la(0)), width)), len(pack([0] * len(lb(0)), width)), len(pack([0] * len(lc(0)), cw)))
        regs = lambda first, n: ", ".join(f"{{i{first + j}}}" for j in range(n))
        outs = ", ".join(f"{{o{j}}}" for j in range(nc))
        if kind in ("s8", "u8"):
            types = f"s32.{kind}.{kind}.s32"
        else:
            types = f"{acc}.{kind}.{kind}.{acc}"
        name = f"mma.sync.aligned.{shape}.row.col.{types}"
        text = f"{name} {{{{{outs}}}}}, {{{{{regs(0, na)}}}}}, {{{{{regs(na, nb)}}}}}, {{{{{regs(na + nb, nc)}}}}};"
        f = Form(name, text, [rcls] * (na + nb + nc), [rcls] * nc,
                 [{"bits": 64 if rcls == "b64" else 32, **({"float": acc} if acc in ("f32", "f64") else {"lanes": "f16"} if acc == "f16" else {})}] * nc)
        M = 8 if shape.startswith("m8") else 16
        N, K = 8, int(shape.split("k")[1])
        for _ in range(3):
            if kind in ("s8", "u8"):
                A = [[rng.randrange(-128, 128) if kind == "s8" else rng.randrange(256) for _ in range(K)] for _ in range(M)]
                B = [[rng.randrange(-128, 128) if kind == "s8" else rng.randrange(256) for _ in range(N)] for _ in range(K)]
                C = [[rng.randrange(-2**31, 2**31) for _ in range(N)] for _ in range(M)]
                enc = lambda v: v & 0xff
                cenc = lambda v: v & 0xffffffff
            else:
                ef = fmt[kind]
                def rnd_val():
                    v = Fraction(rng.randrange(-2048, 2048), 512)
                    bits = R.encode(1 if v < 0 else 0, abs(v), ef)
                    return bits & ~0x1fff if kind == "tf32" else bits  # tf32: f32 with 10 mantissa bits
                A = [[rnd_val() for _ in range(K)] for _ in range(M)]
                B = [[rnd_val() for _ in range(N)] for _ in range(K)]
                C = [[R.encode(0, Fraction(rng.randrange(0, 4096), 256), fmt[acc]) ^ (rng.getrandbits(1) << (cw - 1)) for _ in range(N)] for _ in range(M)]
                enc = cenc = lambda v: v
            # D
            D = [[None] * N for _ in range(M)]
            for i in range(M):
                for j in range(N):
                    if kind in ("s8", "u8"):
                        D[i][j] = R.wrap(sum(A[i][k] * B[k][j] for k in range(K)) + C[i][j], 32)
                    else:
                        terms = [R.value(A[i][k], fmt[kind]) * R.value(B[k][j], fmt[kind]) for k in range(K)]
                        cv = R.value(C[i][j], fmt[acc])
                        exact = sum(terms) + cv
                        approx = R.encode(1 if exact < 0 else 0, abs(exact), fmt[acc])
                        scale = sum(abs(x) for x in terms) + abs(cv)
                        tol = float(scale) * (2.0 ** -19 if acc == "f32" else 2.0 ** -9 if acc == "f16" else 2.0 ** -48)
                        D[i][j] = {"approx": approx, "tol": tol}
            for l in range(32):
                ins = pack([enc(A[r][c]) for r, c in la(l)], width) + pack([enc(B[k][n]) for k, n in lb(l)], width) + pack([cenc(C[r][c]) for r, c in lc(l)], cw)
                outs_l = [D[r][c] for r, c in lc(l)]
                if acc == "f16":
                    outs_l = [[outs_l[2 * j], outs_l[2 * j + 1]] for j in range(nc)]
                f.case(ins, outs_l)
        forms.append(f)
    return forms


def fp8_forms(rng):
    """8-bit float conversions (OCP e4m3 and e5m2, and the exponent-only ue8m0), two at a time."""
    forms = []
    f32s = float_edges(F32) + rand_floats(rng, F32, 40) + [R.encode(s_, Fraction(x), F32) for s_ in (0, 1) for x in (448, 449, 464, 500, 57344, 61440, Fraction(1, 512), Fraction(1, 1024))]
    for name8, f8 in (("e4m3x2", E4M3), ("e5m2x2", E5M2)):
        for relu in (False, True):
            name = f"cvt.rn.satfinite{'.relu' if relu else ''}.{name8}.f32"
            f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b16"], [{"bits": 16, "lanes8": f8.name}])
            for x, y in zip(f32s, f32s[7:] + f32s[:7]):
                f.case([x, y], [[R.float_to_float(y, F32, f8, "rn", relu=relu, satfinite=True), R.float_to_float(x, F32, f8, "rn", relu=relu, satfinite=True)]])
            forms.append(f)
        name = f"cvt.rn.satfinite.{name8}.f16x2"
        f = Form(name, f"{name} {{d}}, {{a}};", ["b32"], ["b16"], [{"bits": 16, "lanes8": f8.name}])
        h = float_edges(F16) + rand_floats(rng, F16, 20)
        for x, y in zip(h, h[5:] + h[:5]):
            f.case([x | y << 16], [[R.float_to_float(x, F16, f8, "rn", satfinite=True), R.float_to_float(y, F16, f8, "rn", satfinite=True)]])
        forms.append(f)
        name = f"cvt.rn.f16x2.{name8}"
        f = Form(name, f"{name} {{d}}, {{a}};", ["b16"], ["b32"], [{"bits": 32, "lanes": "f16"}])
        for v in range(0, 65536, 97):
            f.case([v], [[R.float_to_float(v & 0xff, f8, F16, "rn"), R.float_to_float(v >> 8, f8, F16, "rn")]])
        forms.append(f)

    def ue8m0(x, mode):
        d = R.decode(x, F32)
        if d[0] == "nan":
            return 0xff
        if d[0] == "inf":
            return None if d[1] else 0xfe  # +inf saturates to the largest power of two
        if d[1] or d[2] == 0:
            return None  # no sign and no zero in ue8m0: the ISA does not say
        e = R.floor_log2(d[2])
        if mode == "rp" and d[2] != Fraction(2) ** e:
            e += 1
        if e < -127:
            return None
        return min(e + 127, 0xfe)
    for mode in ("rz", "rp"):
        name = f"cvt.{mode}.satfinite.ue8m0x2.f32"
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b16"], [{"bits": 16, "lanes8": "ue8m0"}])
        for x, y in zip(f32s, f32s[3:] + f32s[:3]):
            f.case([x, y], [[ue8m0(y, mode), ue8m0(x, mode)]])
        forms.append(f)
    f = Form("cvt.rn.bf16x2.ue8m0x2", "cvt.rn.bf16x2.ue8m0x2 {d}, {a};", ["b16"], ["b32"], [{"bits": 32, "lanes": "bf16"}])
    ue = lambda e: NAN if e == 0xff else R.encode(0, Fraction(2) ** (e - 127), BF16)
    for v in list(range(0, 65536, 251)) + [0xff00, 0x00ff, 0xfe01]:
        f.case([v], [[ue(v & 0xff), ue(v >> 8)]])
    forms.append(f)
    return forms


def warp_forms(rng):
    """Warp collectives over full warps (a case is a lane; 32 consecutive cases are one warp)."""
    forms = []
    # shfl.sync, by the ISA's pseudo-code: b's low 5 bits are the lane or offset, c's low 5 bits
    # the clamp and c[12:8] the segment mask; a lane whose source is out of range keeps its value.
    for mode in ("up", "down", "bfly", "idx"):
        for b, c in ((1, 0x1f if mode != "up" else 0), (3, 0x1f if mode != "up" else 0), (5, 0x1c07 if mode != "up" else 0x1c00), (31, 0x1f), (0, 0x1f), (2, 0x181f)):
            name = f"shfl.sync.{mode}.b32.{b}.{c:#x}"
            f = Form(name, f"shfl.sync.{mode}.b32 {{d}}|{{q}}, {{a}}, {b}, {c:#x}, 0xffffffff;", ["b32"], ["b32", "pred"])
            for _ in range(2):
                vals = rand_ints(rng, 32, 32)
                for lane in range(32):
                    seg = (c >> 8) & 0x1f
                    cv = c & 0x1f
                    max_lane = (lane & seg) | (cv & ~seg & 0x1f)
                    min_lane = lane & seg
                    if mode == "up":
                        j = lane - b
                        ok = j >= max_lane
                    elif mode == "down":
                        j = lane + b
                        ok = j <= max_lane
                    elif mode == "bfly":
                        j = lane ^ b
                        ok = j <= max_lane
                    else:
                        j = min_lane | (b & ~seg & 0x1f)
                        ok = j <= max_lane
                    f.case([vals[lane]], [vals[j] if ok else vals[lane], int(ok)])
            forms.append(f)
    # vote and ballot over the warp's predicates.
    for op in ("all", "any", "uni", "ballot"):
        out = "b32" if op == "ballot" else "pred"
        ty = "b32" if op == "ballot" else "pred"
        for neg in ("", "!"):
            name = f"vote.sync.{op}.{ty}{'.not' if neg else ''}"
            f = Form(name, f"vote.sync.{op}.{ty} {{d}}, {neg}{{a}}, 0xffffffff;", ["pred"], [out])
            for density in (0.5, 1.0, 0.0, 0.97):
                ps = [int(rng.random() < density) for _ in range(32)]
                qs = [p ^ 1 for p in ps] if neg else ps
                r = {"all": int(all(qs)), "any": int(any(qs)), "uni": int(len(set(qs)) == 1), "ballot": sum(q << l for l, q in enumerate(qs))}[op]
                for p in ps:
                    f.case([p], [r])
            forms.append(f)
    # redux.sync over the warp.
    for op in ("add", "min", "max", "and", "or", "xor"):
        for ty in (("u32", "s32") if op in ("add", "min", "max") else ("b32",)):
            name = f"redux.sync.{op}.{ty}"
            f = Form(name, f"{name} {{d}}, {{a}}, 0xffffffff;", ["b32"], ["b32"])
            for _ in range(3):
                vals = rand_ints(rng, 32, 32)
                sv = [R.int_value(v, 32, ty == "s32") for v in vals]
                acc = {"add": sum(sv), "min": min(sv), "max": max(sv)}.get(op)
                if acc is None:
                    acc = vals[0]
                    for v in vals[1:]:
                        acc = {"and": acc & v, "or": acc | v, "xor": acc ^ v}[op]
                for v in vals:
                    f.case([v], [R.wrap(acc, 32)])
            forms.append(f)
    f = Form("activemask.b32", "activemask.b32 {d};", [], ["b32"])
    for _ in range(64):
        f.case([], [0xffffffff])
    forms.append(f)
    return forms


def space_forms(rng):
    """Loads, stores and atomics in the other state spaces, and cvta between them."""
    forms = []
    for space in ("shared", "local"):
        decl = ".shared .align 8 .b8 sp[1024];" if space == "shared" else ".local .align 8 .b8 sp[8];"
        # Each thread its own 8 bytes (shared: indexed by tid.x).
        addr = "{{ .reg .b32 %t, %ad;\n  mov.u32 %t, %tid.x;\n  mov.u32 %ad, sp;\n  mad.lo.u32 %ad, %t, 8, %ad;\n" if space == "shared" else "{{ .reg .b64 %ad;\n  mov.u64 %ad, sp;\n"
        for ty, bits, sg in (("s8", 8, True), ("u16", 16, False), ("s32", 32, True), ("b64", 64, False)):
            rc = cls_of(max(bits, 32))
            name = f"st.ld.{space}.{ty}"
            f = Form(name, addr + f"  st.{space}.b64 [%ad], {{b}};\n  st.{space}.{ty} [%ad], {{a}};\n  ld.{space}.{ty} {{d}}, [%ad];\n  ld.{space}.b64 {{q}}, [%ad]; }}}}",
                     [rc, "b64"], [rc, "b64"], decls=decl)
            for x, y in zip(int_edges(WIDTH[rc]) + rand_ints(rng, WIDTH[rc], 8), rand_ints(rng, 64, 40)):
                m = (1 << bits) - 1
                f.case([x, y], [R.wrap(R.int_value(x, bits, sg), WIDTH[rc]), (y & ~m & (2**64 - 1)) | (x & m)])
            forms.append(f)
        for op, fn in (("add", lambda o, b: o + b), ("max", max), ("exch", lambda o, b: b), ("inc", lambda o, b: 0 if o >= b else o + 1)):
            name = f"atom.{space}.{op}.u32"
            f = Form(name, addr + f"  st.{space}.u32 [%ad], {{c}};\n  atom.{space}.{op}.u32 {{d}}, [%ad], {{b}};\n  ld.{space}.u32 {{q}}, [%ad]; }}}}",
                     ["b32", "b32", "b32"], ["b32", "b32"], decls=decl)
            for old, b in zip(int_edges(32) + rand_ints(rng, 32, 8), rand_ints(rng, 32, 8) + int_edges(32)):
                if op == "inc":
                    old, b = old % 70, b % 64
                f.case([0, b, old], [old, R.wrap(fn(old, b), 32)])
            forms.append(f)
    for op, fn in (("add", lambda o, b: o + b), ("or", lambda o, b: o | b), ("min", lambda o, b: min(R.signed(o, 32), R.signed(b, 32)))):
        ty = "s32" if op == "min" else "b32" if op == "or" else "u32"
        name = f"red.global.{op}.{ty}"
        f = Form(name, f"st.global.b32 [{{o0}}], {{b}};\n{name} [{{o0}}], {{a}};", ["b32", "b32"], ["mem"])
        for x, old in zip(int_edges(32) + rand_ints(rng, 32, 8), rand_ints(rng, 32, 8) + int_edges(32)):
            f.case([x, old], [0xA5A5A5A500000000 | R.wrap(fn(old, x), 32)])
        forms.append(f)
    # ld.const of an initialized constant array, at an offset the case gives.
    f = Form("ld.const.u16", "{{ .reg .b64 %ad, %o;\n  mov.u64 %ad, ctab;\n  cvt.u64.u32 %o, {a};\n  add.s64 %ad, %ad, %o;\n  ld.const.u16 {d}, [%ad]; }}",
             ["b32"], ["b16"], module_decls=".const .align 2 .u16 ctab[8] = {1, 65535, 32768, 4660, 0, 7, 43981, 2};")
    table = [1, 65535, 32768, 4660, 0, 7, 43981, 2]
    for k in range(8):
        f.case([2 * k], [table[k]])
    forms.append(f)
    f = Form("ldu.global.b64", "ldu.global.b64 {d}, [{a}];", ["mem"], ["b64"])
    for x in int_edges(64):
        f.case([x], [x])
    forms.append(f)
    f = Form("ld.param.u32", "ld.param.u32 {d}, [n];", [], ["b32"])
    for _ in range(7):
        f.case([], [7])
    forms.append(f)
    # cvta there and back: a shared offset to a generic address and back.
    f = Form("cvta.shared.roundtrip", "{{ .reg .b64 %g, %s;\n  cvt.u64.u32 %s, {a};\n  cvta.shared.u64 %g, %s;\n  cvta.to.shared.u64 {d}, %g; }}", ["b32"], ["b64"])
    for x in (0, 8, 1024, 4096, 65536):
        f.case([x], [x])
    forms.append(f)
    return forms


def more_integer_forms(rng):
    forms = []
    # Funnel shifts: {b:a} shifted, the high (shf.l) or low (shf.r) word kept.
    for d in ("l", "r"):
        for mode in ("wrap", "clamp"):
            name = f"shf.{d}.{mode}.b32"
            f = Form(name, f"{name} {{d}}, {{a}}, {{b}}, {{c}};", ["b32"] * 3, ["b32"])
            for x, y in zip(rand_ints(rng, 32, 8), rand_ints(rng, 32, 8)):
                for c in (0, 1, 7, 31, 32, 33, 63, 255, 2**32 - 1):
                    n = c & 31 if mode == "wrap" else min(c, 32)
                    v = y << 32 | x
                    f.case([x, y, c], [((v << n) >> 32) & 0xffffffff if d == "l" else (v >> n) & 0xffffffff])
            forms.append(f)
    # 24-bit multiplies: the low 24 bits of each operand (sign-extended for .s32), the 48-bit
    # product's low 32 (.lo) or bits 47..16 (.hi); mad24 adds c.
    for ty, sg in (("u32", False), ("s32", True)):
        for hl in ("lo", "hi"):
            for mad in (False, True):
                op = "mad24" if mad else "mul24"
                name = f"{op}.{hl}.{ty}"
                f = Form(name, f"{name} {{d}}, {{a}}, {{b}}" + (", {c};" if mad else ";"), ["b32"] * (3 if mad else 2), ["b32"])
                for x, y, z in zip(int_edges(32) + rand_ints(rng, 32, 16), rand_ints(rng, 32, 40), rand_ints(rng, 32, 40)):
                    p = R.int_value(x, 24, sg) * R.int_value(y, 24, sg)
                    r = (p if hl == "lo" else p >> 16) & 0xffffffff
                    f.case([x, y, z][:3 if mad else 2], [R.wrap(r + (z if mad else 0), 32)])
                forms.append(f)
    # testp: classes of floats.
    for fname, f_ in (("f32", F32), ("f64", F64)):
        def cls(x):
            d = R.decode(x, f_)
            return {"finite": d[0] == "num", "infinite": d[0] == "inf", "number": d[0] != "nan", "notanumber": d[0] == "nan",
                    "normal": d[0] == "num" and d[2] != 0 and not R.is_subnormal(x, f_), "subnormal": R.is_subnormal(x, f_)}
        for op in ("finite", "infinite", "number", "notanumber", "normal", "subnormal"):
            f = Form(f"testp.{op}.{fname}", f"testp.{op}.{fname} {{d}}, {{a}};", [cls_of(f_.bits)], ["pred"])
            for x in float_edges(f_):
                f.case([x], [int(cls(x)[op])])
            forms.append(f)
    # Atomics on each thread's own slot: the slot (output 1) starts as `old` (input 2); the
    # atom returns it (output 0) and leaves op(old, b) there.
    for op, ty, bits, fn in (("add", "u32", 32, lambda o, b: o + b), ("add", "u64", 64, lambda o, b: o + b),
                             ("min", "s32", 32, lambda o, b: min(R.signed(o, 32), R.signed(b, 32))),
                             ("max", "u32", 32, max), ("max", "s64", 64, lambda o, b: max(R.signed(o, 64), R.signed(b, 64))),
                             ("exch", "b32", 32, lambda o, b: b), ("and", "b64", 64, lambda o, b: o & b), ("or", "b32", 32, lambda o, b: o | b),
                             ("xor", "b32", 32, lambda o, b: o ^ b), ("inc", "u32", 32, lambda o, b: 0 if o >= b else o + 1),
                             ("dec", "u32", 32, lambda o, b: b if o == 0 or o > b else o - 1)):
        c = cls_of(bits)
        name = f"atom.global.{op}.{ty}"
        f = Form(name, f"st.global.b{bits} [{{o1}}], {{c}};\n{name} {{d}}, [{{o1}}], {{b}};", ["b32", c, c], [c, "mem"])
        for old, b in zip(int_edges(bits)[::2] + rand_ints(rng, bits, 8), rand_ints(rng, bits, 8) + int_edges(bits)[1::2]):
            if op in ("inc", "dec"):
                b, old = b % 64, old % 70
            keep = 0 if bits == 64 else 0xA5A5A5A500000000
            f.case([0, b, old], [old, keep | R.wrap(fn(old, b), bits)])
        forms.append(f)
    f = Form("atom.global.cas.b32", "st.global.b32 [{o1}], {c};\natom.global.cas.b32 {d}, [{o1}], {a}, {b};", ["b32", "b32", "b32"], ["b32", "mem"])
    for k in range(12):
        old, new = rng.getrandbits(32), rng.getrandbits(32)
        cmp_ = old if k % 2 else rng.getrandbits(32)
        f.case([cmp_, new, old], [old, 0xA5A5A5A500000000 | (new if cmp_ == old else old)])
    forms.append(f)
    return forms


def carry_forms(rng):
    """Extended-precision arithmetic through the condition code CC.CF (PTX ISA, "Extended-Precision
    Integer Arithmetic Instructions"): add.cc/addc add the carry out of/into the type's width,
    sub.cc/subc subtract with borrow (d = a - (b + CF), CF = the borrow out), mad.cc/madc add
    a * b's low or high half, c and CF. Carry in comes from `add.cc.u32` of two inputs that do
    (0xffffffff + 1) or do not (1 + 1) overflow; the carry out is read by `addc.u32 q, 0, 0`."""
    forms = []
    carry_in = [(0xFFFFFFFF, 1, 1), (1, 1, 0)]  # (e, f) with the carry e + f sets, that carry
    for ty, bits, sg in [(t, b, s) for b in (32, 64) for (t, s) in ((f"u{b}", False), (f"s{b}", True))]:
        c = cls_of(bits)
        xs = int_edges(bits)
        u = lambda x: R.wrap(x, bits)
        trios = list(zip(xs + rand_ints(rng, bits, 20), rand_ints(rng, bits, len(xs) + 20), (xs[::-1] + rand_ints(rng, bits, 20))))
        # Where the carry or borrow turns on CF alone: b equal to a, one below, a + b just
        # reaching 2^bits; each twice, so that both carry-in values meet it.
        for x in xs[:8]:
            trios += [(x, x, x)] * 2 + [(x, u(x - 1), x)] * 2 + [(x, u(-x), 1)] * 2 + [(x, u(-x - 1), 0)] * 2
        v = lambda x: R.int_value(x, bits, sg)

        def part(op, x, y):
            p = v(x) * v(y)
            return u(p) if op == "lo" else u(p >> bits)

        ops = {
            "add": lambda x, y, z, cf: u(x) + u(y) + cf,
            "sub": lambda x, y, z, cf: u(x) - (u(y) + cf),
            "mad.lo": lambda x, y, z, cf: part("lo", x, y) + u(z) + cf,
            "mad.hi": lambda x, y, z, cf: part("hi", x, y) + u(z) + cf,
        }
        for op, fn in ops.items():
            mad = op.startswith("mad")
            args = "{a}, {b}, {c}" if mad else "{a}, {b}"
            for cin in (False, True):
                for cout in (False, True):
                    if not cin and not cout:
                        continue  # a plain add/sub/mad: integer_forms
                    base, hl = (op.split(".") + [""])[:2]
                    name = f"{base}{'c' if cin else ''}{'.' + hl if hl else ''}{'.cc' if cout else ''}.{ty}"
                    setup = "add.cc.u32 %rt, {i3}, {i4};\n" if cin else ""
                    read = "\naddc.u32 {q}, 0, 0;" if cout else ""
                    f = Form(name, setup + f"{name} {{d}}, {args};" + read, [c, c, c, "b32", "b32"], [c, "b32"] if cout else [c])
                    for (x, y, z), (e, g, cf) in zip(trios, carry_in * len(trios)):
                        if not cin:
                            cf = 0
                        s = fn(x, y, z, cf)
                        out = [u(s)]
                        if cout:
                            out.append(int(s < 0) if base == "sub" else s >> bits)
                        f.case([x, y, z, e, g], out)
                    forms.append(f)
    return forms


def packed_int_forms(rng):
    """min/max on two 16-bit integer lanes (PTX ISA 8.0, sm_90: min/max.u16x2, .s16x2, and .relu
    for .s16x2, which clamps a negative lane result to 0); griddepcontrol, which orders a grid
    after the grids it depends on, changes no value."""
    forms = []
    edges = [0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x00FF, 0xFF00]
    pairs_ = [(a | b << 16, c | d << 16) for a, b, c, d in zip(edges, edges[::-1], edges[3:] + edges[:3], edges[5:] + edges[:5])]
    pairs_ += [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(24)]
    for op in ("min", "max"):
        for ty, sg in (("u16x2", False), ("s16x2", True)):
            for relu in ((False, True) if sg else (False,)):
                name = f"{op}{'.relu' if relu else ''}.{ty}"
                f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"])
                for x, y in pairs_:
                    out = 0
                    for k in (0, 16):
                        a, b = R.int_value(x >> k, 16, sg), R.int_value(y >> k, 16, sg)
                        r = min(a, b) if op == "min" else max(a, b)
                        if relu:
                            r = max(r, 0)
                        out |= R.wrap(r, 16) << k
                    f.case([x, y], [out])
                forms.append(f)
    f = Form("griddepcontrol", "griddepcontrol.launch_dependents;\ngriddepcontrol.wait;\nmov.b32 {d}, {a};", ["b32"], ["b32"])
    for x in (0, 1, 0xDEADBEEF):
        f.case([x], [x])
    forms.append(f)
    return forms


def approximate_forms(rng):
    """The .approx functions, within the maximum errors the PTX ISA states for each."""
    import math
    forms = []
    f32 = lambda b: struct.unpack("<f", struct.pack("<I", b))[0]
    enc = lambda x: struct.unpack("<I", struct.pack("<f", x))[0]
    xs = [enc(v) for v in (0.5, 1.0, 1.5, 2.0, 3.0, 0.1, 7.25, 100.0, -0.5, -3.0, 1e-3, 12.5, -12.5, 0.75, 1e5, 3.14159, -2.7)]
    xs += [enc(rng.uniform(-50, 50)) for _ in range(40)]
    specials = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fffffff]

    def approx(true, tol):
        if math.isnan(true):
            return NAN
        if math.isinf(true):
            return enc(true)
        return {"approx": enc(true), "tol": tol}
    fns = {
        # name: (function, error bound as a function of (x, true value), special-case results)
        "ex2.approx.ftz.f32": (lambda x: 2.0 ** x if x < 128 else math.inf, lambda x, t: abs(t) * 2 ** -22.5 if abs(x) < 100 else None),
        "lg2.approx.ftz.f32": (lambda x: math.log2(x) if x > 0 else (-math.inf if x == 0 else math.nan), lambda x, t: 2 ** -22.6 if 0.5 < x < 2 else abs(t) * 2 ** -22),
        "sin.approx.ftz.f32": (math.sin, lambda x, t: 2 ** -20.9 if abs(x) <= 100 * math.pi else None),
        "cos.approx.ftz.f32": (math.cos, lambda x, t: 2 ** -20.5 if abs(x) <= 100 * math.pi else None),
        "rsqrt.approx.ftz.f32": (lambda x: 1 / math.sqrt(x) if x > 0 else (math.inf if x == 0 else math.nan), lambda x, t: abs(t) * 2 ** -22.9),
        "rcp.approx.ftz.f32": (lambda x: 1 / x if x != 0 else math.inf, lambda x, t: abs(t) * 2 ** -23),
        "sqrt.approx.ftz.f32": (lambda x: math.sqrt(x) if x >= 0 else math.nan, lambda x, t: abs(t) * 2 ** -23),
        "tanh.approx.f32": (math.tanh, lambda x, t: abs(t) * 2 ** -10.987),
    }
    for name, (fn, bound) in fns.items():
        f = Form(name, f"{name} {{d}}, {{a}};", ["b32"], ["b32"], [{"bits": 32, "float": "f32"}])
        for x in xs + specials:
            v = f32(x)
            if math.isnan(v) or math.isinf(v) or v == 0:
                continue  # special inputs: the ISA's tables differ per function; left to the golden file
            try:
                t = fn(v)
            except (ValueError, OverflowError):
                t = math.nan
            b = None if math.isnan(t) or math.isinf(t) else bound(v, t)
            f.case([x], [None if b is None and not (math.isnan(t) or math.isinf(t)) else approx(t, b)])
        forms.append(f)
    # div.approx / div.full: within 2 ulp of the quotient.
    for name in ("div.approx.f32", "div.full.f32"):
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b32", "b32"], ["b32"], [{"bits": 32, "float": "f32"}])
        for x, y in zip(xs, xs[3:] + xs[:3]):
            q = f32(x) / f32(y)
            ulp = math.ulp(struct.unpack("<f", struct.pack("<f", q))[0]) if q != 0 else 0
            f.case([x, y], [{"approx": enc(q), "tol": 2 * max(ulp, 2 ** -149)}])
        forms.append(f)
    return forms


def relu_forms(rng):
    """fma/min/max with .relu on halves (numba found bf16 fma.rn.relu wrong)."""
    forms = []
    for hname, hf in (("f16", F16), ("bf16", BF16)):
        edges = float_edges(hf)
        chk = [{"bits": 16, "float": hname}]
        relu = lambda r: r if r in (None, NAN) or not (r >> 15) else 0
        name = f"fma.rn.relu.{hname}"
        f = Form(name, f"{name} {{d}}, {{a}}, {{b}}, {{c}};", ["b16"] * 3, ["b16"], chk)
        for (x, y), z in zip(pairs(edges, edges[::3]) + list(zip(rand_floats(rng, hf, 40), rand_floats(rng, hf, 40))), (edges * 30)[::7]):
            f.case([x, y, z], [relu(R.fma(x, y, z, hf))])
        forms.append(f)
        for op in ("min", "max"):
            name = f"{op}.relu.{hname}"
            f = Form(name, f"{name} {{d}}, {{a}}, {{b}};", ["b16"] * 2, ["b16"], chk)
            for x, y in pairs(edges, edges[::3]):
                r = R.minmax(x, y, hf, op == "max")
                f.case([x, y], [relu(r)])
            forms.append(f)
    return forms


def self_check(rng):
    """The reference against the host's own IEEE arithmetic where that is exact: Python floats are
    binary64 with round-to-nearest, and struct's 'e' and 'f' formats round to nearest too."""
    d = lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]
    q = lambda x: struct.unpack("<Q", struct.pack("<d", x))[0]
    import math
    for x, y in zip(rand_floats(rng, F64, 400), rand_floats(rng, F64, 400)):
        for fn, ref in ((lambda: R.add(x, y, F64), lambda: d(x) + d(y)), (lambda: R.mul(x, y, F64), lambda: d(x) * d(y)),
                        (lambda: R.div(x, y, F64), lambda: d(x) / d(y) if d(y) != 0 else None),
                        (lambda: R.sqrt(x, F64), lambda: math.sqrt(d(x)) if d(x) >= 0 else None)):
            want = ref()
            if want is None:
                continue
            got = fn()
            assert (got == NAN and want != want) or got == q(want), (hex(x), hex(y), got, want)
    for x in rand_floats(rng, F32, 400):
        fx = struct.unpack("<f", struct.pack("<I", x))[0]
        if fx != fx or abs(fx) > 65504 * 2:
            continue
        try:
            want = struct.unpack("<H", struct.pack("<e", fx))[0]
        except OverflowError:
            continue
        assert R.float_to_float(x, F32, F16, "rn") == want, hex(x)


def main():
    rng = random.Random(SEED)
    self_check(random.Random(SEED + 1))
    forms = integer_forms(rng) + move_forms(rng) + memory_forms(rng) + conversion_forms(rng) + float_forms(rng) + new_instruction_forms(rng) + collective_forms(rng) + matrix_forms(rng) + fp8_forms(rng) + more_integer_forms(rng) + carry_forms(rng) + packed_int_forms(rng) + approximate_forms(rng) + relu_forms(rng) + warp_forms(rng) + space_forms(rng)
    names = [f.name for f in forms]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    out = {"seed": SEED, "forms": [f.json() for f in forms]}
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)
    print(f"{len(forms)} forms, {sum(len(f.cases) for f in forms)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
