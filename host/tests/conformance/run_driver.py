#!/usr/bin/env python3
"""Runs the PTX conformance corpus through a CUDA driver (any libcuda.so.1) and writes what the
device computed, form by form, as a golden file; prints how it compares with the ISA reference.

    python3 run_driver.py --driver /usr/lib/x86_64-linux-gnu/libcuda.so.1 --out golden/sm_90.json
    python3 run_driver.py --driver target/release/libcuda.so --only 'prmt*,mov*' --out /tmp/x.json

On a GPU machine (scripts/gpu-check.sh) NVIDIA's driver runs each kernel on the real device; the
file it writes, committed under host/tests/conformance/golden/, makes CI check the sim against
that GPU too (host/tests/conformance.rs). With vgpu's own libcuda it runs the same kernels
through the whole stack (socket or /dev/nvidia0, mediator, sim). Exit status: 0 when every form
the driver runs agrees with the reference, 1 otherwise (the file is written either way).
Needs only the Python standard library (no numpy), as the GPU machine has no network.
"""

import argparse
import ctypes
import fnmatch
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SLOT, SLOTS, BLOCK, FILL = 8, 16, 128, 0xA5


class Driver:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.check("cuInit", 0)
        dev = ctypes.c_int()
        self.check("cuDeviceGet", ctypes.byref(dev), 0)
        name = ctypes.create_string_buffer(256)
        self.check("cuDeviceGetName", name, 256, dev)
        self.name = name.value.decode()
        ver = ctypes.c_int()
        self.check("cuDriverGetVersion", ctypes.byref(ver))
        self.version = ver.value
        self.ctx = ctypes.c_void_p()
        self.check("cuDevicePrimaryCtxRetain", ctypes.byref(self.ctx), dev)
        self.check("cuCtxSetCurrent", self.ctx)

    def call(self, fn, *args):
        f = getattr(self.lib, fn)
        f.restype = ctypes.c_int
        return f(*args)

    def check(self, fn, *args):
        r = self.call(fn, *args)
        if r != 0:
            raise RuntimeError(f"{fn} failed: CUresult {r} ({self.error_name(r)})")

    def error_name(self, r):
        s = ctypes.c_char_p()
        if self.call("cuGetErrorName", r, ctypes.byref(s)) == 0 and s.value:
            return s.value.decode()
        return "?"

    def run(self, form):
        """Each case's outputs, or a string saying why the driver would not run the form."""
        mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
        ptx = form["ptx"].encode() + b"\0"
        r = self.call("cuModuleLoadData", ctypes.byref(mod), ptx)
        if r != 0:
            return f"cuModuleLoadData: {self.error_name(r)}"
        try:
            r = self.call("cuModuleGetFunction", ctypes.byref(fn), mod, b"conformance")
            if r != 0:
                return f"cuModuleGetFunction: {self.error_name(r)}"
            cases = form["cases"]
            n = len(cases)
            size = n * SLOT * SLOTS
            host_in = bytearray(size)
            for i, c in enumerate(cases):
                for j, v in enumerate(c["in"]):
                    at = (i * SLOTS + j) * SLOT
                    host_in[at:at + SLOT] = v.to_bytes(8, "little")
            din, dout = ctypes.c_uint64(), ctypes.c_uint64()
            self.check("cuMemAlloc_v2", ctypes.byref(din), ctypes.c_size_t(size))
            self.check("cuMemAlloc_v2", ctypes.byref(dout), ctypes.c_size_t(size))
            try:
                buf = (ctypes.c_ubyte * size).from_buffer(host_in)
                self.check("cuMemcpyHtoD_v2", din, buf, ctypes.c_size_t(size))
                self.check("cuMemsetD8_v2", dout, ctypes.c_ubyte(FILL), ctypes.c_size_t(size))
                a_in, a_out, a_n = ctypes.c_uint64(din.value), ctypes.c_uint64(dout.value), ctypes.c_uint32(n)
                params = (ctypes.c_void_p * 3)(*(ctypes.cast(ctypes.byref(x), ctypes.c_void_p) for x in (a_in, a_out, a_n)))
                grid = (n + BLOCK - 1) // BLOCK
                r = self.call("cuLaunchKernel", fn, grid, 1, 1, BLOCK, 1, 1, 0, None, params, None)
                if r == 0:
                    r = self.call("cuCtxSynchronize")
                if r != 0:
                    return f"launch: {self.error_name(r)}"
                out = (ctypes.c_ubyte * size)()
                self.check("cuMemcpyDtoH_v2", out, dout, ctypes.c_size_t(size))
                raw = bytes(out)
            finally:
                self.call("cuMemFree_v2", din)
                self.call("cuMemFree_v2", dout)
            nout = len(form["checks"])
            return [[int.from_bytes(raw[(i * SLOTS + j) * SLOT:(i * SLOTS + j + 1) * SLOT], "little") for j in range(nout)] for i in range(n)]
        finally:
            self.call("cuModuleUnload", mod)


def agrees(want, got, check):
    bits = check["bits"]
    got &= (1 << bits) - 1
    if "lanes" in check:
        return all(agrees(w, (got >> (16 * i)) & 0xffff, {"bits": 16, "float": check["lanes"]}) for i, w in enumerate(want))
    if "lanes8" in check:
        return all(agrees(w, (got >> (8 * i)) & 0xff, {"bits": 8, "float": check["lanes8"]}) for i, w in enumerate(want))
    if want is None:
        return True
    if isinstance(want, dict):
        import struct
        f = check["float"]
        dec = {"f16": lambda v: struct.unpack("<e", struct.pack("<H", v))[0], "f32": lambda v: struct.unpack("<f", struct.pack("<I", v))[0],
               "f64": lambda v: struct.unpack("<d", struct.pack("<Q", v))[0]}[f]
        return abs(dec(got) - dec(want["approx"])) <= want["tol"]
    if want == "nan":
        if check["float"] == "e4m3":
            return got & 0x7f == 0x7f
        if check["float"] == "ue8m0":
            return got == 0xff
        e, m = {"e5m2": (5, 2), "f16": (5, 10), "bf16": (8, 7), "f32": (8, 23), "f64": (11, 52)}[check["float"]]
        return (got >> m) & ((1 << e) - 1) == (1 << e) - 1 and got & ((1 << m) - 1) != 0
    return want == got


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--driver", required=True, help="path of the libcuda.so.1 to load")
    ap.add_argument("--out", required=True, help="golden file to write")
    ap.add_argument("--only", default="*", help="comma-separated name patterns of the forms to run")
    ap.add_argument("--corpus", help="a corpus.py output to use (default: made now)")
    args = ap.parse_args()
    path = args.corpus
    if not path:
        path = os.path.join(tempfile.mkdtemp(), "corpus.json")
        subprocess.run([sys.executable, os.path.join(HERE, "corpus.py"), path], check=True)
    with open(path) as fh:
        corpus = json.load(fh)
    patterns = args.only.split(",")
    forms = [f for f in corpus["forms"] if any(fnmatch.fnmatch(f["name"], p) for p in patterns)]
    drv = Driver(args.driver)
    golden = {"device": drv.name, "driver_version": drv.version, "seed": corpus["seed"], "forms": {}, "not_run": {}, "differs_from_reference": {}}
    for k, form in enumerate(forms):
        got = drv.run(form)
        if isinstance(got, str):
            golden["not_run"][form["name"]] = got
            continue
        golden["forms"][form["name"]] = got
        diffs = []
        for c, outs in zip(form["cases"], got):
            for j, (want, check) in enumerate(zip(c["out"], form["checks"])):
                if not agrees(want, outs[j], check):
                    diffs.append({"in": [hex(v) for v in c["in"]], "output": j, "device": hex(outs[j]), "reference": want})
        if diffs:
            golden["differs_from_reference"][form["name"]] = diffs[:20]
        if (k + 1) % 100 == 0:
            print(f"run_driver: {k + 1}/{len(forms)} forms", file=sys.stderr)
    with open(args.out, "w") as fh:
        json.dump(golden, fh)
    ran = len(golden["forms"])
    print(f"run_driver: {drv.name} (driver {drv.version}): {ran} of {len(forms)} forms ran, "
          f"{len(golden['not_run'])} not run, {len(golden['differs_from_reference'])} differ from the ISA reference")
    for name, d in list(golden["differs_from_reference"].items())[:20]:
        print(f"  differs: {name}: {d[0]}")
    for name, why in list(golden["not_run"].items())[:20]:
        print(f"  not run: {name}: {why}")
    return 1 if golden["differs_from_reference"] else 0


if __name__ == "__main__":
    sys.exit(main())
