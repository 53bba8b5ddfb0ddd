//! The driver's linker (cuLinkCreate, cuLinkAddData, cuLinkAddFile, cuLinkComplete,
//! cuLinkDestroy), for PTX: inputs that are all PTX are joined into one PTX module (the newest
//! `.version` of them, the first's `.target`; an `.extern` declaration of a function or variable
//! that another input defines is dropped, since the joined module defines it), which
//! cuModuleLoadData then loads as any PTX: the sim runs it, a GPU's driver compiles it. A single
//! input that is a fatbin or a cubin is handed on as it is (the module loader decides: the sim
//! takes the PTX out of a fatbin and refuses SASS with CUDA_ERROR_NO_BINARY_FOR_GPU).
//! CUDA's device runtime library, libcudadevrt.a, is taken and left out: what PTX calls of it
//! (cooperative groups' cudaCGGetIntrinsicHandle and cudaCGSynchronize) the sim provides itself.
//! Anything else (SASS objects to link together, other archives) is CUDA_ERROR_NOT_SUPPORTED,
//! said in the error log buffer the caller gave.

use super::*;
use std::collections::HashMap;
use std::ffi::{c_char, c_uint, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

// CUjitInputType (cuda.h).
const INPUT_CUBIN: u32 = 0;
const INPUT_PTX: u32 = 1;
const INPUT_FATBINARY: u32 = 2;
const INPUT_LIBRARY: u32 = 4;

/// CUDA's device runtime library (by its name, as numba and nvcc pass it, and an `ar` archive's
/// magic).
fn is_cudadevrt(name: &str, data: &[u8]) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.starts_with("libcudadevrt") && data.starts_with(b"!<arch>\n")
}
// CUjit_option (cuda.h): the log buffers.
const OPT_MAX_REGISTERS: u32 = 0;
const OPT_INFO_LOG_BUFFER: u32 = 3;
const OPT_INFO_LOG_BUFFER_SIZE_BYTES: u32 = 4;
const OPT_ERROR_LOG_BUFFER: u32 = 5;
const OPT_ERROR_LOG_BUFFER_SIZE_BYTES: u32 = 6;

/// A caller's log buffer (pointer and size as it gave them in the options).
#[derive(Clone, Copy, Default)]
struct LogBuffer {
    ptr: usize,
    size: usize,
}

impl LogBuffer {
    /// Writes `msg` NUL-terminated, truncated to the buffer.
    fn write(&self, msg: &str) {
        if self.ptr == 0 || self.size == 0 {
            return;
        }
        let n = msg.len().min(self.size - 1);
        // SAFETY: the caller gave a buffer of `size` bytes for the link's life (CUDA's contract
        // for these options); we write at most `size` bytes into it.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), self.ptr as *mut u8, n);
            *(self.ptr as *mut u8).add(n) = 0;
        }
    }
}

#[derive(Default)]
struct Link {
    inputs: Vec<(u32, Vec<u8>)>,
    info_log: LogBuffer,
    error_log: LogBuffer,
    /// The linked image, valid until cuLinkDestroy.
    output: Vec<u8>,
    /// CU_JIT_MAX_REGISTERS: kept in the linked PTX as each kernel's `.maxnreg`.
    max_registers: Option<u32>,
}

fn links() -> std::sync::MutexGuard<'static, HashMap<u64, Link>> {
    static LINKS: OnceLock<Mutex<HashMap<u64, Link>>> = OnceLock::new();
    LINKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Link states are numbered from here (well away from the mediator's handles).
static NEXT_LINK: AtomicU64 = AtomicU64::new(0x1117_0000_0000);

/// The log buffers and the register limit among a call's JIT options.
unsafe fn jit_options(n: c_uint, options: *const u32, values: *const *mut c_void) -> (LogBuffer, LogBuffer, Option<u32>) {
    let (mut info, mut error, mut max_registers) = (LogBuffer::default(), LogBuffer::default(), None);
    if n == 0 || options.is_null() || values.is_null() {
        return (info, error, max_registers);
    }
    for i in 0..n as usize {
        // SAFETY: `n` options and as many values (API contract).
        let (opt, val) = unsafe { (*options.add(i), *values.add(i)) };
        match opt {
            OPT_INFO_LOG_BUFFER => info.ptr = val as usize,
            OPT_INFO_LOG_BUFFER_SIZE_BYTES => info.size = val as usize,
            OPT_ERROR_LOG_BUFFER => error.ptr = val as usize,
            OPT_ERROR_LOG_BUFFER_SIZE_BYTES => error.size = val as usize,
            // An unsigned int carried in the pointer-sized value.
            OPT_MAX_REGISTERS if val as usize > 0 => max_registers = Some(val as usize as u32),
            _ => {}
        }
    }
    (info, error, max_registers)
}

/// `text` with `.maxnreg n` among the performance directives of each kernel that has none.
fn limit_registers(text: &str, n: u32) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(at) = rest.find(".entry") {
        let Some(open) = rest[at..].find('{').map(|o| at + o) else { break };
        out.push_str(&rest[..open]);
        if !rest[at..open].contains(".maxnreg") {
            out.push_str(&format!(".maxnreg {n}\n"));
        }
        rest = &rest[open..];
        out.push('{');
        rest = &rest[1..];
    }
    out.push_str(rest);
    out
}

fn state_id(state: Handle) -> u64 {
    handle_of(state)
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkCreate_v2(n: c_uint, options: *const u32, values: *const *mut c_void, state: *mut Handle) -> CUresult {
    guard("cuLinkCreate", || {
        if state.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: forwarded API contract.
        let (info_log, error_log, max_registers) = unsafe { jit_options(n, options, values) };
        let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        links().insert(id, Link { info_log, error_log, max_registers, ..Link::default() });
        put(state, to_handle(id))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkCreate(n: c_uint, options: *const u32, values: *const *mut c_void, state: *mut Handle) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuLinkCreate_v2(n, options, values, state) }
}

fn add(state: Handle, kind: u32, data: Vec<u8>, name: &str) -> Result<(), CUresult> {
    let mut all = links();
    let link = all.get_mut(&state_id(state)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    match kind {
        INPUT_PTX | INPUT_CUBIN | INPUT_FATBINARY => {
            link.inputs.push((kind, data));
            Ok(())
        }
        // CU_JIT_INPUT_LIBRARY: the device runtime (an `ar` archive of SASS objects).
        INPUT_LIBRARY if is_cudadevrt(name, &data) => {
            vlog!(crate::log::DEBUG, "cuLinkAddData: {name} left out: the sim provides the device runtime's cooperative-groups calls");
            Ok(())
        }
        _ => {
            let msg = format!("vgpu's linker takes PTX, cubin and fatbin inputs only; `{name}` is of input type {kind} (an object or a library such as libcudadevrt.a)");
            vlog!(crate::log::WARN, "cuLinkAddData: {msg}");
            link.error_log.write(&msg);
            Err(CUDA_ERROR_NOT_SUPPORTED)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkAddData_v2(state: Handle, kind: u32, data: *const c_void, size: usize, name: *const c_char, _n: c_uint, _options: *const u32, _values: *const *mut c_void) -> CUresult {
    guard("cuLinkAddData", || {
        if data.is_null() || size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `size` readable bytes at `data` (API contract).
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }.to_vec();
        // SAFETY: NUL-terminated or NULL (API contract).
        let name = if name.is_null() { String::from("(unnamed)") } else { unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned() };
        add(state, kind, bytes, &name)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkAddData(state: Handle, kind: u32, data: *const c_void, size: usize, name: *const c_char, n: c_uint, options: *const u32, values: *const *mut c_void) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuLinkAddData_v2(state, kind, data, size, name, n, options, values) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkAddFile_v2(state: Handle, kind: u32, path: *const c_char, _n: c_uint, _options: *const u32, _values: *const *mut c_void) -> CUresult {
    guard("cuLinkAddFile", || {
        if path.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: NUL-terminated (API contract).
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).map_err(|e| {
            if let Some(l) = links().get(&state_id(state)) {
                l.error_log.write(&format!("cannot read {path}: {e}"));
            }
            CUDA_ERROR_FILE_NOT_FOUND
        })?;
        add(state, kind, bytes, &path)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkAddFile(state: Handle, kind: u32, path: *const c_char, n: c_uint, options: *const u32, values: *const *mut c_void) -> CUresult {
    // SAFETY: same contract.
    unsafe { cuLinkAddFile_v2(state, kind, path, n, options, values) }
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkComplete(state: Handle, image: *mut *const c_void, size: *mut usize) -> CUresult {
    guard("cuLinkComplete", || {
        let mut all = links();
        let link = all.get_mut(&state_id(state)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let out = match link.inputs.as_slice() {
            [] => Err("nothing was added to the link".to_string()),
            [(INPUT_CUBIN | INPUT_FATBINARY, one)] => Ok(one.clone()),
            inputs if inputs.iter().all(|(k, _)| *k == INPUT_PTX) => {
                let texts: Vec<String> = inputs.iter().map(|(_, d)| String::from_utf8_lossy(d.split(|&b| b == 0).next().unwrap_or_default()).into_owned()).collect();
                join_ptx(&texts).map(|t| {
                    let mut t = match link.max_registers {
                        Some(n) => limit_registers(&t, n),
                        None => t,
                    };
                    t.push('\0');
                    t.into_bytes()
                })
            }
            _ => Err("vgpu's linker joins PTX modules, or hands on a single fatbin or cubin; it cannot link SASS (cubin) objects together or with PTX".to_string()),
        };
        match out {
            Ok(bytes) => {
                link.info_log.write(&format!("vgpu: linked {} input(s) into {} bytes", link.inputs.len(), bytes.len()));
                link.output = bytes;
                put(image, link.output.as_ptr().cast::<c_void>())?;
                put(size, link.output.len())
            }
            Err(msg) => {
                vlog!(crate::log::WARN, "cuLinkComplete: {msg}");
                link.error_log.write(&msg);
                Err(CUDA_ERROR_NOT_SUPPORTED)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLinkDestroy(state: Handle) -> CUresult {
    guard("cuLinkDestroy", || links().remove(&state_id(state)).map(drop).ok_or(CUDA_ERROR_INVALID_HANDLE))
}

/// The directive lines every PTX module starts with.
fn is_header(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with(".version") || t.starts_with(".target") || t.starts_with(".address_size")
}

/// The name an `.extern` declaration declares: the identifier before its parameter list (or
/// before `;`, `[` or an initializer for a variable), after any return-value list.
fn declared_name(decl: &str) -> Option<String> {
    let mut rest = decl.trim_start().strip_prefix(".extern")?.trim_start();
    // Directives (.func, .global, .align 4, .b32 ...) and a return list in parentheses.
    loop {
        if let Some(r) = rest.strip_prefix('.') {
            let word_end = r.find(|c: char| c.is_whitespace() || c == '(').unwrap_or(r.len());
            rest = r[word_end..].trim_start();
            // `.align N`: skip the number too.
            if let Some(n) = rest.strip_prefix(|c: char| c.is_ascii_digit()) {
                rest = n.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
            }
        } else if rest.starts_with('(') {
            let close = rest.find(')')?;
            rest = rest[close + 1..].trim_start();
        } else {
            break;
        }
    }
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '%')).collect();
    (!name.is_empty()).then_some(name)
}

/// Whether `text` defines `name` (a non-extern function or variable of that name).
fn defines(text: &str, name: &str) -> bool {
    let mut from = 0;
    while let Some(i) = text[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before = text[..at].chars().next_back();
        let after = text[from..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if ident(before) || ident(after) {
            continue;
        }
        // The statement this occurrence belongs to starts after the previous `;`, `}` or `{`.
        let start = text[..at].rfind([';', '}', '{']).map_or(0, |p| p + 1);
        let stmt = text[start..at].trim_start();
        let declares = stmt.starts_with(".visible") || stmt.starts_with(".weak") || stmt.starts_with(".func") || stmt.starts_with(".entry") || stmt.starts_with(".global") || stmt.starts_with(".const");
        if declares && !stmt.contains(".extern") && !text[from..].trim_start().starts_with(';') {
            return true;
        }
    }
    false
}

/// One PTX module made of several: the newest `.version`, the first `.target` and
/// `.address_size`, then each module's body; `.extern` declarations of what another module
/// defines are dropped.
fn join_ptx(texts: &[String]) -> Result<String, String> {
    let version = texts
        .iter()
        .flat_map(|t| t.lines().filter(|l| l.trim_start().starts_with(".version")))
        .max_by(|a, b| {
            let v = |l: &str| -> (u32, u32) {
                let s = l.trim_start().trim_start_matches(".version").trim();
                let (maj, min) = s.split_once('.').unwrap_or((s, "0"));
                (maj.trim().parse().unwrap_or(0), min.trim().parse().unwrap_or(0))
            };
            v(a).cmp(&v(b))
        })
        .ok_or("a PTX input has no .version directive")?
        .trim()
        .to_string();
    let first_of = |d: &str| texts.iter().flat_map(|t| t.lines()).find(|l| l.trim_start().starts_with(d)).map(|l| l.trim().to_string());
    let target = first_of(".target").ok_or("a PTX input has no .target directive")?;
    let mut out = format!("{version}\n{target}\n");
    if let Some(a) = first_of(".address_size") {
        out.push_str(&a);
        out.push('\n');
    }
    let bodies: Vec<String> = texts.iter().map(|t| t.lines().filter(|l| !is_header(l)).map(|l| format!("{l}\n")).collect()).collect();
    for (i, body) in bodies.iter().enumerate() {
        let others: Vec<&String> = bodies.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, b)| b).collect();
        out.push_str(&drop_satisfied_externs(body, &others));
    }
    Ok(out)
}

/// `body` without its `.extern` declarations (up to their `;`) of names another module defines.
fn drop_satisfied_externs(body: &str, others: &[&String]) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(i) = rest.find(".extern") {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let end = from.find(';').map_or(from.len(), |e| e + 1);
        let decl = &from[..end];
        let satisfied = declared_name(decl).is_some_and(|n| others.iter().any(|t| defines(t, &n)));
        if !satisfied {
            out.push_str(decl);
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_limit_becomes_each_kernels_maxnreg() {
        let ptx = ".visible .entry a(.param .u64 p)\n{\n ret;\n}\n.visible .entry b() .maxnreg 20\n{ ret; }\n";
        let limited = limit_registers(ptx, 38);
        assert_eq!(limited, ".visible .entry a(.param .u64 p)\n.maxnreg 38\n{\n ret;\n}\n.visible .entry b() .maxnreg 20\n{ ret; }\n");
    }

    #[test]
    fn extern_declarations_name_what_they_declare() {
        assert_eq!(declared_name(".extern .func (.param .b32 r) twice (.param .b32 x);").as_deref(), Some("twice"));
        assert_eq!(declared_name(".extern .func  done ();").as_deref(), Some("done"));
        assert_eq!(declared_name(".extern .global .align 4 .b32 counter;").as_deref(), Some("counter"));
        assert_eq!(declared_name(".extern .shared .align 16 .b8 smem[];").as_deref(), Some("smem"));
    }

    #[test]
    fn joined_modules_keep_one_header_and_drop_satisfied_externs() {
        let a = ".version 7.0\n.target sm_50\n.address_size 64\n.extern .func (.param .b32 r) twice (.param .b32 x);\n.extern .func other ();\n.visible .entry k() { ret; }\n".to_string();
        let b = ".version 7.8\n.target sm_50\n.address_size 64\n.visible .func (.param .b32 r) twice (.param .b32 x) { ret; }\n".to_string();
        let j = join_ptx(&[a, b]).unwrap();
        assert_eq!(j.matches(".version").count(), 1);
        assert!(j.starts_with(".version 7.8\n.target sm_50\n.address_size 64\n"), "{j}");
        assert!(!j.contains(".extern .func (.param .b32 r) twice"), "{j}");
        assert!(j.contains(".extern .func other ();"), "an extern nobody defines stays: {j}");
        assert!(j.contains(".visible .func (.param .b32 r) twice"), "{j}");
    }
}
