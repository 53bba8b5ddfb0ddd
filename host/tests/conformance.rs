//! The sim's PTX interpreter against an independent reference, instruction form by form.
//!
//! `tests/conformance/corpus.py` writes the corpus: a kernel per instruction form (type,
//! rounding mode, register widths...) with edge-case inputs and the results the PTX ISA gives
//! (computed in Python with exact rational arithmetic, sharing nothing with the interpreter).
//! Every form the interpreter accepts must give exactly those results. Forms it does not
//! implement yet are listed in `tests/conformance/unsupported.txt` (the list must be exact: a
//! listed form that now runs fails the test too). Where a GPU's golden file exists
//! (`tests/conformance/golden/*.json`, written by `scripts/gpu-check.sh`), the sim must also
//! equal the real GPU on every case, the ones the ISA leaves open included.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use vgpu_host::sim::ptx::{launch, with_engine, with_jit_heat, Engine, LaunchConfig, Memory, Module};

const SLOT: usize = 8;
const SLOTS: usize = 16;
const IN_BASE: u64 = 0x2000_0000_0000;
const OUT_BASE: u64 = 0x2000_1000_0000;
const FILL: u8 = 0xA5;

const VARS_BASE: u64 = 0x2000_2000_0000;

/// The launch's memory: inputs, outputs, and the module's variables (one region each).
struct Buffers {
    input: Vec<u8>,
    output: Vec<u8>,
    vars: Vec<Vec<u8>>,
}

impl Memory for Buffers {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])> {
        let mut r = vec![(IN_BASE, &mut self.input[..]), (OUT_BASE, &mut self.output[..])];
        r.extend(self.vars.iter_mut().enumerate().map(|(i, v)| (VARS_BASE + ((i as u64) << 24), &mut v[..])));
        r
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// The corpus, written once per test process: the tests run in parallel and would otherwise
/// read each other's half-written file.
fn corpus() -> &'static Value {
    static CORPUS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ptx-conformance-{}.json", std::process::id()));
        let status = Command::new("python3").arg(dir().join("corpus.py")).arg(&out).status().expect("python3 runs corpus.py");
        assert!(status.success(), "corpus.py failed");
        let v = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let _ = std::fs::remove_file(&out);
        v
    })
}

/// Is `got` (an output's bits) what `want` (the reference's value) allows under `check`?
fn matches(want: &Value, got: u64, check: &Value) -> bool {
    let bits = check["bits"].as_u64().unwrap() as u32;
    let got = if bits == 64 { got } else { got & ((1u64 << bits) - 1) };
    if let Some(lanes) = check["lanes"].as_str() {
        let want = want.as_array().expect("per-lane values");
        return want.iter().enumerate().all(|(i, w)| matches(w, (got >> (16 * i)) & 0xffff, &serde_json::json!({"bits": 16, "float": lanes})));
    }
    if let Some(lanes) = check["lanes8"].as_str() {
        let want = want.as_array().expect("per-byte values");
        return want.iter().enumerate().all(|(i, w)| matches(w, (got >> (8 * i)) & 0xff, &serde_json::json!({"bits": 8, "float": lanes})));
    }
    match want {
        Value::Null => true,
        Value::String(s) if s == "nan" => is_nan(got, check["float"].as_str().expect("a NaN needs a float format")),
        // A result the ISA gives only to within an accumulation error (mma): near the exact one.
        Value::Object(o) => {
            let fmt = check["float"].as_str().expect("an approximate value needs a float format");
            let (w, tol) = (o["approx"].as_u64().unwrap(), o["tol"].as_f64().unwrap());
            (float_value(got, fmt) - float_value(w, fmt)).abs() <= tol
        }
        v => v.as_u64() == Some(got),
    }
}

fn float_value(v: u64, fmt: &str) -> f64 {
    match fmt {
        "f16" => half::f16::from_bits(v as u16).to_f64(),
        "bf16" => half::bf16::from_bits(v as u16).to_f64(),
        "f32" => f32::from_bits(v as u32) as f64,
        _ => f64::from_bits(v),
    }
}

fn is_nan(v: u64, fmt: &str) -> bool {
    let (e, m) = match fmt {
        "e4m3" => return v & 0x7f == 0x7f, // OCP e4m3: no infinity, S.1111.111 is NaN
        "ue8m0" => return v == 0xff,
        "e5m2" => (5, 2),
        "f16" => (5, 10),
        "bf16" => (8, 7),
        "f32" => (8, 23),
        "f64" => (11, 52),
        _ => panic!("format {fmt}"),
    };
    (v >> m) & ((1 << e) - 1) == (1 << e) - 1 && v & ((1 << m) - 1) != 0
}

enum Outcome {
    /// Each case's outputs.
    Ran(Vec<Vec<u64>>),
    /// The interpreter does not run this form (rejected at load or lookup, or at launch).
    Unsupported(String),
}

fn run(form: &Value) -> Outcome {
    let module = match Module::parse(form["ptx"].as_str().unwrap()) {
        Ok(m) => m,
        Err(e) => return Outcome::Unsupported(format!("load: {e}")),
    };
    let Some(k) = module.kernel("conformance") else {
        let (why, _) = module.unsupported("conformance").expect("the kernel is known");
        return Outcome::Unsupported(format!("lookup: {why}"));
    };
    let cases = form["cases"].as_array().unwrap();
    let n = cases.len();
    let mut input = vec![0u8; n * SLOT * SLOTS];
    for (i, c) in cases.iter().enumerate() {
        for (j, v) in c["in"].as_array().unwrap().iter().enumerate() {
            let at = (i * SLOTS + j) * SLOT;
            input[at..at + SLOT].copy_from_slice(&v.as_u64().unwrap().to_le_bytes());
        }
    }
    // Module variables, placed and initialized as the device does at load.
    let addrs: HashMap<String, u64> = module.globals().iter().enumerate().map(|(i, g)| (g.name.clone(), VARS_BASE + ((i as u64) << 24))).collect();
    let mut vars: Vec<Vec<u8>> = module
        .globals()
        .iter()
        .map(|g| {
            let mut v = g.init.clone();
            v.resize(g.size.max(1) as usize, 0);
            v
        })
        .collect();
    for (g, v) in module.globals().iter().zip(&mut vars) {
        for (off, target, addend) in &g.relocs {
            let at = *off as usize;
            v[at..at + 8].copy_from_slice(&addrs[target].wrapping_add_signed(*addend).to_le_bytes());
        }
    }
    let mut mem = Buffers { input, output: vec![FILL; n * SLOT * SLOTS], vars };
    let mut params = vec![0u8; k.param_bytes as usize];
    for (p, v) in k.params.iter().zip([IN_BASE, OUT_BASE, n as u64]) {
        let o = p.offset as usize;
        params[o..o + p.size as usize].copy_from_slice(&v.to_le_bytes()[..p.size as usize]);
    }
    let block = 128u32;
    let cfg = LaunchConfig { grid: [(n as u32).div_ceil(block), 1, 1], block: [block, 1, 1], dynamic_shared_bytes: 0 };
    if let Err(e) = launch(&module, k, &cfg, &params, &addrs, &mut mem) {
        return Outcome::Unsupported(format!("launch: {e}"));
    }
    let outs = form["checks"].as_array().unwrap().len();
    Outcome::Ran(
        (0..n)
            .map(|i| {
                (0..outs)
                    .map(|j| {
                        let at = (i * SLOTS + j) * SLOT;
                        u64::from_le_bytes(mem.output[at..at + SLOT].try_into().unwrap())
                    })
                    .collect()
            })
            .collect(),
    )
}

/// unsupported.txt: one form name a line, then `#` and why.
fn listed_unsupported() -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir().join("unsupported.txt")).unwrap();
    text.lines().map(|l| l.split('#').next().unwrap().trim()).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// A golden file's outputs: per form, per case, each output's bits.
type GoldenForms = BTreeMap<String, Vec<Vec<Option<u64>>>>;

/// Golden files written on real GPUs: {"device": .., "forms": {name: [[outputs] per case]}}.
fn goldens() -> Vec<(String, GoldenForms)> {
    let Ok(rd) = std::fs::read_dir(dir().join("golden")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")) {
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let forms = v["forms"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, cases)| {
                let cases = cases.as_array().unwrap().iter().map(|c| c.as_array().unwrap().iter().map(Value::as_u64).collect()).collect();
                (name.clone(), cases)
            })
            .collect();
        out.push((v["device"].as_str().unwrap_or("?").to_string(), forms));
    }
    out
}

fn hex_list(v: &Value) -> String {
    v.as_array().unwrap().iter().map(|x| format!("{:#x}", x.as_u64().unwrap())).collect::<Vec<_>>().join(", ")
}

/// The warp engine (the default) runs each form's cases 128 lanes at a time in lockstep.
#[test]
fn every_instruction_form_the_sim_runs_matches_the_ptx_isa_reference() {
    check_corpus(Engine::Warp);
}

/// The per-thread engine, which runs what the warp engine has no warp-wide form for.
#[test]
fn every_instruction_form_matches_the_reference_on_the_per_thread_engine_too() {
    check_corpus(Engine::Thread);
}

/// The compiled engine (exec/jit.rs), each kernel compiled at its first launch: the forms it
/// emits inline and the ones it calls back for.
#[test]
fn every_instruction_form_matches_the_reference_as_compiled_code_too() {
    with_jit_heat(0, || check_corpus(Engine::Compiled));
}

fn check_corpus(engine: Engine) {
    let corpus = corpus();
    let forms = corpus["forms"].as_array().unwrap();
    let listed = listed_unsupported();
    let goldens = goldens();
    let mut wrong = Vec::new();
    let mut unsupported = BTreeMap::new();
    let mut cases_checked = 0usize;
    for form in forms {
        let name = form["name"].as_str().unwrap();
        let got = match with_engine(engine, || run(form)) {
            Outcome::Unsupported(why) => {
                unsupported.insert(name.to_string(), why);
                continue;
            }
            Outcome::Ran(got) => got,
        };
        let checks = form["checks"].as_array().unwrap();
        let mut bad = 0;
        for (c, outs) in form["cases"].as_array().unwrap().iter().zip(&got) {
            cases_checked += 1;
            for (j, (want, check)) in c["out"].as_array().unwrap().iter().zip(checks).enumerate() {
                if !matches(want, outs[j], check) {
                    bad += 1;
                    if bad <= 3 {
                        let bits = check["bits"].as_u64().unwrap() as u32;
                        let sim = if bits == 64 { outs[j] } else { outs[j] & ((1u64 << bits) - 1) };
                        let want = want.as_u64().map_or_else(|| want.to_string(), |w| format!("{w:#x}"));
                        let sim = match check["float"].as_str() {
                            Some(f) => format!("{sim:#x} ({})", float_value(sim, f)),
                            None => format!("{sim:#x}"),
                        };
                        wrong.push(format!("{name}: inputs [{}] output {j}: sim {sim}, ISA reference {want}", hex_list(&c["in"])));
                    }
                }
            }
        }
        if bad > 3 {
            wrong.push(format!("{name}: ... {bad} wrong outputs in all"));
        }
        for (device, g) in &goldens {
            let Some(gcases) = g.get(name) else { continue };
            for ((c, outs), gouts) in form["cases"].as_array().unwrap().iter().zip(&got).zip(gcases) {
                for (j, (gv, check)) in gouts.iter().zip(checks).enumerate() {
                    let Some(gv) = gv else { continue };
                    let want = match check["float"].as_str() {
                        Some(f) if is_nan(*gv, f) => serde_json::json!("nan"),
                        _ => serde_json::json!(gv),
                    };
                    let check = if check["lanes"].is_string() || check["lanes8"].is_string() { serde_json::json!({"bits": check["bits"]}) } else { check.clone() };
                    if !matches(&want, outs[j], &check) {
                        wrong.push(format!("{name}: inputs [{}] output {j}: sim {:#x}, {device} {gv:#x}", hex_list(&c["in"]), outs[j]));
                    }
                }
            }
        }
    }
    let now: BTreeSet<String> = unsupported.keys().cloned().collect();
    let newly: Vec<_> = now.difference(&listed).map(|n| format!("{n}: {}", unsupported[n])).collect();
    let stale: Vec<_> = listed.difference(&now).collect();
    eprintln!(
        "conformance ({engine:?} engine): {} forms, {} run ({cases_checked} cases), {} not implemented by the sim, {} golden file(s)",
        forms.len(),
        forms.len() - now.len(),
        now.len(),
        goldens.len()
    );
    assert!(wrong.is_empty(), "{} wrong results:\n{}", wrong.len(), wrong.join("\n"));
    assert!(newly.is_empty(), "forms the sim rejects that unsupported.txt does not list:\n{}", newly.join("\n"));
    assert!(stale.is_empty(), "forms unsupported.txt lists that now run (take them off the list): {stale:?}");
}
