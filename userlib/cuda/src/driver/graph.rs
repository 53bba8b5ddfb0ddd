//! CUDA graphs and stream capture, kept in libcuda: a graph is a list of recorded operations
//! (kernel launches with their parameters copied, copies, memsets) in an order that respects
//! their dependencies; launching an instantiated graph replays them on the stream. Capture
//! records, instead of running, what is submitted to a capturing stream (and to streams that
//! join the capture by waiting on one of its events). Work runs in submission order in vgpu
//! (see memory.rs), so replaying nodes in dependency order is a valid schedule.
//!
//! Host nodes (cuGraphAddHostNode, cuLaunchHostFunc while capturing) run their function on
//! replay once the work before them has finished (stream.rs, `run_host_func`).
//! User objects (cuUserObjectCreate) live here too: references held by the application, by
//! graphs and by executable graphs; the destructor runs on a thread of libcuda's once the last
//! one goes.
//! Not supported (CUDA_ERROR_NOT_SUPPORTED): child-graph, event, memory-allocation and
//! conditional nodes, memcpy nodes added explicitly (captured copies work), and capturing a
//! graph launch into another graph.

use super::launch::submit_launch;
use super::memory::{copy_any, memset_2d};
use super::module::kernel_meta;
use super::*;
use crate::state;
use std::collections::HashMap;
use std::ffi::{c_int, c_uint};
use std::sync::{LazyLock, Mutex, MutexGuard};

/// One recorded operation.
#[derive(Clone, Debug)]
pub(crate) enum Work {
    Kernel(KernelNode),
    Memcpy { dst: u64, src: u64, bytes: usize },
    Memset { dst: u64, pitch: usize, value: u32, elem: u32, width: usize, height: usize },
    /// A host function (CUhostFn) and its user data (an address, kept as an integer).
    Host { func: HostFn, data: usize },
    Empty,
}

/// CUhostFn.
pub(crate) type HostFn = unsafe extern "C" fn(*mut std::ffi::c_void);


#[derive(Clone, Debug, PartialEq)]
pub(crate) struct KernelNode {
    pub func: u64,
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared: c_uint,
    /// The parameters, packed as the kernel takes them (copied when the node was made).
    pub packed: Vec<u8>,
    /// One pointer per parameter into `packed`, for cuGraphKernelNodeGetParams.
    arg_ptrs: Vec<usize>,
}

impl KernelNode {
    pub(crate) fn new(func: u64, grid: [c_uint; 3], block: [c_uint; 3], shared: c_uint, packed: Vec<u8>) -> KernelNode {
        KernelNode { func, grid, block, shared, packed, arg_ptrs: Vec::new() }
    }
}

impl Work {
    fn node_type(&self) -> c_int {
        match self {
            Work::Kernel(_) => 0,
            Work::Memcpy { .. } => 1,
            Work::Memset { .. } => 2,
            Work::Host { .. } => 3,
            Work::Empty => 5,
        }
    }
}

struct Node {
    graph: u64,
    work: Work,
    deps: Vec<u64>,
}

#[derive(Default)]
struct Graph {
    /// Node handles, each after its dependencies.
    order: Vec<u64>,
    /// References to user objects the graph holds (cuGraphRetainUserObject): object -> count.
    user_refs: HashMap<u64, u32>,
}

/// A user object (cuUserObjectCreate): its destructor runs once its last reference goes.
struct UserObject {
    refs: u64,
    destroy: HostFn,
    ptr: usize,
}

struct Exec {
    /// References to user objects the executable graph holds: those of its source graph when it
    /// was instantiated (CUDA's rule), released when it is destroyed.
    user_refs: Vec<(u64, u32)>,
    /// (node type, indices of dependencies) per node: what an update must keep.
    shape: Vec<(c_int, Vec<usize>)>,
    work: Vec<Work>,
    /// The source graph's node handles, by position (for cuGraphExecKernelNodeSetParams).
    nodes: Vec<u64>,
}

struct Capture {
    graph: u64,
    /// The nodes the next captured operation depends on.
    deps: Vec<u64>,
    /// The stream that began the capture (only it may end it).
    origin: u64,
    invalidated: bool,
    id: u64,
    mode: c_int,
}

#[derive(Default)]
struct Registry {
    next: u64,
    graphs: HashMap<u64, Graph>,
    nodes: HashMap<u64, Node>,
    execs: HashMap<u64, Exec>,
    captures: HashMap<u64, Capture>,
    /// Events recorded in a capture: the capture's graph and the nodes the record followed.
    events: HashMap<u64, (u64, Vec<u64>)>,
    user_objects: HashMap<u64, UserObject>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

/// cuDevicePrimaryCtxReset: graphs, their instantiations and captures belong to the context.
/// The references they held to user objects go with them; the application's own stay.
pub(crate) fn forget_all_graphs() {
    let mut r = registry();
    let held: Vec<(u64, u32)> = r.graphs.values().flat_map(|g| g.user_refs.iter().map(|(&o, &n)| (o, n))).chain(r.execs.values().flat_map(|e| e.user_refs.iter().copied())).collect();
    let mut dead = Vec::new();
    for (o, n) in held {
        dead.extend(r.release_user_object(o, n));
    }
    let user_objects = std::mem::take(&mut r.user_objects);
    // Handles are never reused, also across a reset.
    *r = Registry { next: r.next, user_objects, ..Registry::default() };
    drop(r);
    run_destructors(dead);
}

/// Runs user objects' destructors on a thread of their own, as CUDA runs them on an internal
/// thread: never under libcuda's locks, never on the thread that let the last reference go
/// (which may hold locks of its own the destructor wants, Python's for one).
fn run_destructors(dead: Vec<UserObject>) {
    if dead.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new().name("vgpu-user-objects".into()).spawn(move || {
        for o in dead {
            // SAFETY: the destructor and its argument as the application gave them to
            // cuUserObjectCreate, called once, after the object's last reference went.
            unsafe { (o.destroy)(o.ptr as *mut std::ffi::c_void) };
        }
    });
    if let Err(e) = spawned {
        crate::vlog!(crate::log::WARN, "cannot start a thread for user objects' destructors ({e}); they do not run");
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn handle(&mut self) -> u64 {
        // Opaque, non-null, never reused; far from anything else libcuda hands out.
        self.next += 1;
        0x6e00_0000_0000 + self.next * 16
    }

    fn add_node(&mut self, graph: u64, work: Work, deps: &[u64]) -> Result<u64, CUresult> {
        if !self.graphs.contains_key(&graph) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if deps.iter().any(|d| self.nodes.get(d).is_none_or(|n| n.graph != graph)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = self.handle();
        self.nodes.insert(h, Node { graph, work, deps: deps.to_vec() });
        self.graphs.get_mut(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?.order.push(h);
        Ok(h)
    }

    /// Removes `graph`; returns the user objects whose last reference it held.
    fn destroy_graph(&mut self, graph: u64) -> Result<Vec<UserObject>, CUresult> {
        let g = self.graphs.remove(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        for n in g.order {
            self.nodes.remove(&n);
        }
        Ok(g.user_refs.into_iter().flat_map(|(o, n)| self.release_user_object(o, n)).collect())
    }

    /// Lets `n` references to user object `o` go; the object, if that was its last.
    fn release_user_object(&mut self, o: u64, n: u32) -> Option<UserObject> {
        let obj = self.user_objects.get_mut(&o)?;
        obj.refs = obj.refs.saturating_sub(n as u64);
        if obj.refs == 0 { self.user_objects.remove(&o) } else { None }
    }

    /// The executable form of `graph` (the references it holds are taken by `retain_refs`).
    fn instantiate(&self, graph: u64) -> Result<Exec, CUresult> {
        let g = self.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let index: HashMap<u64, usize> = g.order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let user_refs: Vec<(u64, u32)> = g.user_refs.iter().map(|(&o, &n)| (o, n)).collect();
        let mut exec = Exec { user_refs, shape: Vec::new(), work: Vec::new(), nodes: g.order.clone() };
        for n in &g.order {
            let node = &self.nodes[n];
            exec.shape.push((node.work.node_type(), node.deps.iter().map(|d| index[d]).collect()));
            exec.work.push(node.work.clone());
        }
        Ok(exec)
    }

    /// Takes the references to user objects a new executable graph holds.
    fn retain_refs(&mut self, exec: &Exec) {
        for &(o, n) in &exec.user_refs {
            if let Some(obj) = self.user_objects.get_mut(&o) {
                obj.refs += n as u64;
            }
        }
    }

    /// The capture `stream` takes part in, if any.
    fn capture(&mut self, stream: u64) -> Option<&mut Capture> {
        self.captures.get_mut(&stream)
    }
}

/// Records `work` (made only then) if `stream` is capturing; Ok(false) if it is not (run it now).
pub(crate) fn record(stream: Handle, work: impl FnOnce() -> Work) -> Result<bool, CUresult> {
    let s = handle_of(stream);
    let mut r = registry();
    let Some(c) = r.capture(s) else { return Ok(false) };
    if c.invalidated {
        return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    let (graph, deps) = (c.graph, c.deps.clone());
    let n = r.add_node(graph, work(), &deps)?;
    if let Some(c) = r.capture(s) {
        c.deps = vec![n];
    }
    Ok(true)
}

/// A synchronizing call on `stream` (or an event recorded in a capture): not allowed while
/// capturing; it invalidates the capture as CUDA does.
pub(crate) fn forbid_while_capturing(stream: Handle) -> Result<(), CUresult> {
    let mut r = registry();
    match r.capture(handle_of(stream)) {
        Some(c) => {
            c.invalidated = true;
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        }
        None => Ok(()),
    }
}

/// cuEventRecord on a capturing stream: the event stands for the capture's current point.
pub(crate) fn record_event(event: Handle, stream: Handle) -> Result<bool, CUresult> {
    let mut r = registry();
    let e = handle_of(event);
    match r.capture(handle_of(stream)) {
        Some(c) => {
            let v = (c.graph, c.deps.clone());
            r.events.insert(e, v);
            Ok(true)
        }
        None => {
            r.events.remove(&e);
            Ok(false)
        }
    }
}

/// cuStreamWaitEvent: waiting on an event recorded in a capture joins the capture.
pub(crate) fn wait_event(stream: Handle, event: Handle) -> Result<bool, CUresult> {
    let mut r = registry();
    let (s, e) = (handle_of(stream), handle_of(event));
    let Some((graph, deps)) = r.events.get(&e).cloned() else {
        // An event from outside any capture: its work has already run (submission order).
        return Ok(r.captures.contains_key(&s));
    };
    if !r.graphs.contains_key(&graph) {
        return Ok(false);
    }
    if s == 0 || s == STREAM_LEGACY {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    match r.capture(s) {
        Some(c) if c.graph == graph => {
            for d in deps {
                if !c.deps.contains(&d) {
                    c.deps.push(d);
                }
            }
        }
        Some(_) => return Err(CUDA_ERROR_NOT_SUPPORTED),
        None => {
            let (id, mode, origin) = r.captures.values().find(|c| c.graph == graph).map_or((0, 2, 0), |c| (c.id, c.mode, c.origin));
            r.captures.insert(s, Capture { graph, deps, origin, invalidated: false, id, mode });
        }
    }
    Ok(true)
}

/// An event recorded in a capture cannot be waited for on the host.
pub(crate) fn check_event_not_captured(event: Handle) -> Result<(), CUresult> {
    let r = registry();
    match r.events.get(&handle_of(event)) {
        Some((g, _)) if r.captures.values().any(|c| c.graph == *g) => Err(CUDA_ERROR_CAPTURED_EVENT),
        _ => Ok(()),
    }
}

pub(crate) fn capture_status(stream: Handle) -> (c_int, u64, u64, Vec<u64>) {
    let mut r = registry();
    match r.capture(handle_of(stream)) {
        Some(c) if c.invalidated => (2, c.id, c.graph, c.deps.clone()),
        Some(c) => (1, c.id, c.graph, c.deps.clone()),
        None => (0, 0, 0, Vec::new()),
    }
}

const STREAM_LEGACY: u64 = vgpu_uapi::proto::STREAM_LEGACY;

/// The legacy NULL stream waits for every blocking stream, so while one of those captures, an
/// operation on it would make it part of the capture, which CUDA refuses with
/// CUDA_ERROR_STREAM_CAPTURE_IMPLICIT (asking whether it captures included).
pub(crate) fn legacy_not_implicated(stream: Handle) -> Result<(), CUresult> {
    let s = handle_of(stream);
    if s != 0 && s != STREAM_LEGACY {
        return Ok(());
    }
    let capturing: Vec<u64> = registry().captures.keys().copied().collect();
    if capturing.into_iter().any(super::stream::is_blocking) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    }
    Ok(())
}

fn begin_capture(stream: Handle, mode: c_int) -> Result<(), CUresult> {
    let s = handle_of(stream);
    if s == 0 || s == STREAM_LEGACY {
        // The legacy NULL stream synchronizes with every other stream: it cannot be captured.
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if !(0..=2).contains(&mode) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // The stream must be valid (the mediator knows its streams).
    state::current_device()?.0.call(vgpu_uapi::proto::Op::StreamQuery, &[&s.to_le_bytes()]).or_else(|e| {
        if e == CUDA_ERROR_NOT_READY { Ok(Vec::new()) } else { Err(e) }
    })?;
    let mut r = registry();
    if r.captures.contains_key(&s) {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    let graph = r.handle();
    r.graphs.insert(graph, Graph::default());
    let id = r.handle();
    r.captures.insert(s, Capture { graph, deps: Vec::new(), origin: s, invalidated: false, id, mode });
    Ok(())
}

const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;

fn end_capture(stream: Handle, out: *mut Handle) -> Result<(), CUresult> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = handle_of(stream);
    let mut r = registry();
    let c = r.captures.get(&s).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    let (graph, invalidated, origin_deps) = (c.graph, c.invalidated, c.deps.clone());
    if c.origin != s {
        // Only the stream that began a capture ends it; trying elsewhere invalidates it.
        r.captures.values_mut().filter(|c| c.graph == graph).for_each(|c| c.invalidated = true);
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
    }
    // Every stream that joined must have been joined back: what it last captured must be
    // something the origin's next work would depend on.
    let mut joined: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut todo = origin_deps;
    while let Some(n) = todo.pop() {
        if joined.insert(n) {
            todo.extend(r.nodes.get(&n).map(|node| node.deps.clone()).unwrap_or_default());
        }
    }
    let unjoined = r.captures.iter().any(|(&other, c)| other != s && c.graph == graph && c.deps.iter().any(|d| !joined.contains(d)));
    // The capture ends for every stream that joined it.
    r.captures.retain(|_, c| c.graph != graph);
    if invalidated || unjoined {
        let _ = r.destroy_graph(graph);
        put(out, std::ptr::null_mut())?;
        return Err(if invalidated { CUDA_ERROR_STREAM_CAPTURE_INVALIDATED } else { CUDA_ERROR_STREAM_CAPTURE_UNJOINED });
    }
    put(out, to_handle(graph))
}

/// Runs an instantiated graph's operations now, in order.
fn launch_exec(exec: Handle, stream: Handle) -> Result<(), CUresult> {
    let work = {
        let mut r = registry();
        if r.capture(handle_of(stream)).is_some() {
            // A graph launched into a capture would become a child-graph node.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        r.execs.get(&handle_of(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?.work.clone()
    };
    let (d, _) = state::current_device()?;
    for w in work {
        match w {
            Work::Kernel(k) => {
                let meta = kernel_meta(to_handle(k.func))?;
                submit_launch(d, &meta, k.grid, k.block, k.shared, stream, &k.packed)?;
            }
            Work::Memcpy { dst, src, bytes } => copy_any(d, dst, src, bytes)?,
            Work::Memset { dst, pitch, value, elem, width, height } => memset_2d(dst, pitch, value, elem, width, height)?,
            Work::Host { func, data } => super::stream::run_host_func(stream, func, data)?,
            Work::Empty => {}
        }
    }
    Ok(())
}

/// CUDA_KERNEL_NODE_PARAMS (v1) and _v2: v2 appends `kern` and `ctx`.
#[repr(C)]
pub struct KernelNodeParams {
    func: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
}

#[repr(C)]
pub struct KernelNodeParamsV2 {
    base: KernelNodeParams,
    kern: Handle,
    ctx: Handle,
}

/// A kernel node from application parameters (the parameter values are copied now).
unsafe fn kernel_work(p: *const KernelNodeParams, kern: Handle) -> Result<Work, CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null pointer to the application's CUDA_KERNEL_NODE_PARAMS (API contract).
    let p = unsafe { &*p };
    let f = if p.func.is_null() { kern } else { p.func };
    let meta = kernel_meta(f)?;
    // SAFETY: forwarded API contract for kernelParams / extra.
    let packed = unsafe { super::launch::pack_params(&meta, p.kernel_params, p.extra)? };
    Ok(Work::Kernel(KernelNode::new(handle_of(f), p.grid, p.block, p.shared, packed)))
}

fn deps_of(deps: *const Handle, n: usize) -> Result<Vec<u64>, CUresult> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if deps.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `deps` points at `n` node handles (API contract).
    Ok(unsafe { std::slice::from_raw_parts(deps, n) }.iter().map(|&h| handle_of(h)).collect())
}

fn add_node(out: *mut Handle, graph: Handle, deps: *const Handle, n: usize, work: Work) -> Result<(), CUresult> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let deps = deps_of(deps, n)?;
    let h = registry().add_node(handle_of(graph), work, &deps)?;
    put(out, to_handle(h))
}

fn kernel_params_out(node: Handle, out: *mut KernelNodeParams, v2: bool) -> Result<(), CUresult> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = registry();
    let n = r.nodes.get_mut(&handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let Work::Kernel(k) = &mut n.work else { return Err(CUDA_ERROR_INVALID_VALUE) };
    let meta = kernel_meta(to_handle(k.func))?;
    let base = k.packed.as_ptr() as usize;
    k.arg_ptrs = meta.params.iter().map(|&(off, _)| base + off as usize).collect();
    let p = KernelNodeParams {
        func: to_handle(k.func),
        grid: k.grid,
        block: k.block,
        shared: k.shared,
        kernel_params: if k.arg_ptrs.is_empty() { std::ptr::null_mut() } else { k.arg_ptrs.as_mut_ptr().cast() },
        extra: std::ptr::null_mut(),
    };
    if v2 {
        // SAFETY: for _v2 the application passes a CUDA_KERNEL_NODE_PARAMS_v2.
        unsafe { out.cast::<KernelNodeParamsV2>().write_unaligned(KernelNodeParamsV2 { kern: p.func, ctx: std::ptr::null_mut(), base: p }) };
        Ok(())
    } else {
        put(out, p)
    }
}

unsafe fn kernel_params_in(node: Handle, p: *const KernelNodeParams, kern: Handle) -> Result<(), CUresult> {
    // SAFETY: forwarded API contract.
    let work = unsafe { kernel_work(p, kern)? };
    let mut r = registry();
    let n = r.nodes.get_mut(&handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if !matches!(n.work, Work::Kernel(_)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    n.work = work;
    Ok(())
}

fn kern_of_v2(p: *const KernelNodeParamsV2) -> Handle {
    if p.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: non-null pointer to a CUDA_KERNEL_NODE_PARAMS_v2 (API contract).
    unsafe { (*p).kern }
}

/// Updates `exec` from `graph` if their shapes match; the CUgraphExecUpdateResult otherwise.
fn exec_update(exec: Handle, graph: Handle) -> Result<(), (c_int, u64)> {
    let mut r = registry();
    let new = r.instantiate(handle_of(graph)).map_err(|_| (1, 0))?;
    let e = r.execs.get_mut(&handle_of(exec)).ok_or((1, 0))?;
    if new.shape.len() != e.shape.len() {
        return Err((2, 0));
    }
    for (i, (a, b)) in new.shape.iter().zip(&e.shape).enumerate() {
        if a.0 != b.0 {
            return Err((3, new.nodes[i]));
        }
        if a.1 != b.1 {
            return Err((2, new.nodes[i]));
        }
    }
    e.work = new.work;
    e.nodes = new.nodes;
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(s: Handle, mode: c_int) -> CUresult {
    guard("cuStreamBeginCapture", || begin_capture(s, mode))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2_ptsz(s: Handle, mode: c_int) -> CUresult {
    cuStreamBeginCapture_v2(s, mode)
}

/// The 10.0 entry point: global capture mode.
#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture(s: Handle) -> CUresult {
    cuStreamBeginCapture_v2(s, 0)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_ptsz(s: Handle) -> CUresult {
    cuStreamBeginCapture_v2(s, 0)
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(s: Handle, graph: *mut Handle) -> CUresult {
    guard("cuStreamEndCapture", || end_capture(s, graph))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture_ptsz(s: Handle, graph: *mut Handle) -> CUresult {
    cuStreamEndCapture(s, graph)
}

thread_local! {
    static CAPTURE_MODE: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

/// The thread's capture-interaction mode (it only restricts what other threads may do while a
/// global capture runs; vgpu does not enforce those restrictions, but keeps the value).
#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    guard("cuThreadExchangeStreamCaptureMode", || {
        if mode.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to a CUstreamCaptureMode (API contract).
        let new = unsafe { *mode };
        if !(0..=2).contains(&new) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        put(mode, CAPTURE_MODE.with(|m| m.replace(new)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphCreate(out: *mut Handle, flags: c_uint) -> CUresult {
    guard("cuGraphCreate", || {
        if out.is_null() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut r = registry();
        let g = r.handle();
        r.graphs.insert(g, Graph::default());
        put(out, to_handle(g))
    })
}

/// cuGraphDebugDotPrint's text: the graph as a DOT digraph, a box per node in dependency order
/// (its kind, and a kernel's name) and an edge per dependency; CU_GRAPH_DEBUG_DOT_FLAGS_VERBOSE
/// adds each node's parameters (launch shape, sizes, addresses).
fn debug_dot(g: u64, verbose: bool) -> Result<String, CUresult> {
    let nodes: Vec<(u64, Work, Vec<u64>)> = {
        let r = registry();
        let graph = r.graphs.get(&g).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        graph.order.iter().filter_map(|n| r.nodes.get(n).map(|node| (*n, node.work.clone(), node.deps.clone()))).collect()
    };
    let id = |n: u64| format!("\"graph_{g}_node_{n}\"");
    let mut out = format!("digraph dot {{\nsubgraph cluster_{g} {{\nlabel=\"graph_{g}\" graph[style=\"dashed\"];\n");
    for (i, (n, work, _)) in nodes.iter().enumerate() {
        let (kind, detail) = match work {
            Work::Kernel(k) => {
                let name = kernel_meta(to_handle(k.func)).map(|m| m.name.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("function {:#x}", k.func));
                let shape = format!("grid ({}, {}, {}), block ({}, {}, {})\\ndynamic shared memory {} bytes, parameters {} bytes", k.grid[0], k.grid[1], k.grid[2], k.block[0], k.block[1], k.block[2], k.shared, k.packed.len());
                ("KERNEL", if verbose { format!("{name}\\n{shape}") } else { name })
            }
            Work::Memcpy { dst, src, bytes } => ("MEMCPY", if verbose { format!("{bytes} bytes\\nsrc {src:#x}\\ndst {dst:#x}") } else { String::new() }),
            Work::Memset { dst, pitch, value, elem, width, height } => {
                ("MEMSET", if verbose { format!("dst {dst:#x} pitch {pitch}\\nvalue {value:#x}, {elem}-byte elements, {width} x {height}") } else { String::new() })
            }
            Work::Host { func, data } => ("HOST", if verbose { format!("function {:#x}\\nuser data {data:#x}", *func as usize) } else { String::new() }),
            Work::Empty => ("EMPTY", String::new()),
        };
        let label = if detail.is_empty() { format!("{i}\\n{kind}") } else { format!("{i}\\n{kind}\\n{detail}") };
        out += &format!("{}[style=\"solid\" shape=\"rectangle\" label=\"{}\"];\n", id(*n), label.replace('"', "\\\""));
    }
    for (n, _, deps) in &nodes {
        for d in deps {
            out += &format!("{} -> {};\n", id(*d), id(*n));
        }
    }
    out += "}\n}\n";
    Ok(out)
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDebugDotPrint(g: Handle, path: *const std::ffi::c_char, flags: c_uint) -> CUresult {
    guard("cuGraphDebugDotPrint", || {
        let path = c_str(path)?;
        let text = debug_dot(handle_of(g), flags & CU_GRAPH_DEBUG_DOT_FLAGS_VERBOSE != 0)?;
        std::fs::write(path, text).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)
    })
}

/// CUgraphDebugDot_flags: every detail (vgpu's one level of detail beyond the default).
const CU_GRAPH_DEBUG_DOT_FLAGS_VERBOSE: c_uint = 1;

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(g: Handle) -> CUresult {
    guard("cuGraphDestroy", || {
        let mut r = registry();
        if r.captures.values().any(|c| c.graph == handle_of(g)) {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        let dead = r.destroy_graph(handle_of(g))?;
        drop(r);
        run_destructors(dead);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, p: *const KernelNodeParams) -> CUresult {
    guard("cuGraphAddKernelNode", || add_node(out, g, deps, n, unsafe { kernel_work(p, std::ptr::null_mut())? }))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode_v2(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, p: *const KernelNodeParamsV2) -> CUresult {
    guard("cuGraphAddKernelNode_v2", || add_node(out, g, deps, n, unsafe { kernel_work(p.cast(), kern_of_v2(p))? }))
}

/// CUDA_MEMSET_NODE_PARAMS.
#[repr(C)]
pub struct MemsetNodeParams {
    dst: u64,
    pitch: usize,
    value: c_uint,
    elem: c_uint,
    width: usize,
    height: usize,
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemsetNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, p: *const MemsetNodeParams, _ctx: Handle) -> CUresult {
    guard("cuGraphAddMemsetNode", || {
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to a CUDA_MEMSET_NODE_PARAMS (API contract).
        let p = unsafe { &*p };
        if !matches!(p.elem, 1 | 2 | 4) || (p.height > 1 && p.pitch < p.width * p.elem as usize) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        add_node(out, g, deps, n, Work::Memset { dst: p.dst, pitch: p.pitch, value: p.value, elem: p.elem, width: p.width, height: p.height })
    })
}

/// CUDA_HOST_NODE_PARAMS.
#[repr(C)]
pub struct HostNodeParams {
    func: Option<HostFn>,
    data: *mut std::ffi::c_void,
}

fn host_work(p: *const HostNodeParams) -> Result<Work, CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null pointer to a CUDA_HOST_NODE_PARAMS (API contract).
    let p = unsafe { &*p };
    Ok(Work::Host { func: p.func.ok_or(CUDA_ERROR_INVALID_VALUE)?, data: p.data as usize })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddHostNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize, p: *const HostNodeParams) -> CUresult {
    guard("cuGraphAddHostNode", || add_node(out, g, deps, n, host_work(p)?))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphHostNodeGetParams(node: Handle, p: *mut HostNodeParams) -> CUresult {
    guard("cuGraphHostNodeGetParams", || {
        let r = registry();
        let Some(Node { work: Work::Host { func, data }, .. }) = r.nodes.get(&handle_of(node)) else { return Err(CUDA_ERROR_INVALID_VALUE) };
        put(p, HostNodeParams { func: Some(*func), data: *data as *mut std::ffi::c_void })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphHostNodeSetParams(node: Handle, p: *const HostNodeParams) -> CUresult {
    guard("cuGraphHostNodeSetParams", || {
        let work = host_work(p)?;
        let mut r = registry();
        let n = r.nodes.get_mut(&handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !matches!(n.work, Work::Host { .. }) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        n.work = work;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddEmptyNode(out: *mut Handle, g: Handle, deps: *const Handle, n: usize) -> CUresult {
    guard("cuGraphAddEmptyNode", || add_node(out, g, deps, n, Work::Empty))
}

/// The API's handle-list outputs: `*count` is the room at `out` (NULL: only the count is
/// wanted); as many handles as fit are written, and `*count` becomes the list's length.
fn put_handles(list: &[u64], out: *mut Handle, count: *mut usize) -> Result<(), CUresult> {
    if count.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if !out.is_null() {
        // SAFETY: `count` is readable; the caller provides `*count` slots at `out`.
        let room = unsafe { *count };
        for (i, &h) in list.iter().take(room).enumerate() {
            // SAFETY: i < room slots.
            unsafe { out.add(i).write(to_handle(h)) };
        }
    }
    put(count, list.len())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetNodes(g: Handle, nodes: *mut Handle, count: *mut usize) -> CUresult {
    guard("cuGraphGetNodes", || {
        let r = registry();
        put_handles(&r.graphs.get(&handle_of(g)).ok_or(CUDA_ERROR_INVALID_VALUE)?.order, nodes, count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetRootNodes(g: Handle, nodes: *mut Handle, count: *mut usize) -> CUresult {
    guard("cuGraphGetRootNodes", || {
        let r = registry();
        let order = &r.graphs.get(&handle_of(g)).ok_or(CUDA_ERROR_INVALID_VALUE)?.order;
        let roots: Vec<u64> = order.iter().copied().filter(|n| r.nodes[n].deps.is_empty()).collect();
        put_handles(&roots, nodes, count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphNodeGetType(node: Handle, t: *mut c_int) -> CUresult {
    guard("cuGraphNodeGetType", || {
        let ty = registry().nodes.get(&handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?.work.node_type();
        put(t, ty)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphNodeGetDependencies(node: Handle, deps: *mut Handle, count: *mut usize) -> CUresult {
    guard("cuGraphNodeGetDependencies", || {
        let r = registry();
        put_handles(&r.nodes.get(&handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?.deps, deps, count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeGetParams(node: Handle, p: *mut KernelNodeParams) -> CUresult {
    guard("cuGraphKernelNodeGetParams", || kernel_params_out(node, p, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeGetParams_v2(node: Handle, p: *mut KernelNodeParamsV2) -> CUresult {
    guard("cuGraphKernelNodeGetParams_v2", || kernel_params_out(node, p.cast(), true))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeSetParams(node: Handle, p: *const KernelNodeParams) -> CUresult {
    guard("cuGraphKernelNodeSetParams", || unsafe { kernel_params_in(node, p, std::ptr::null_mut()) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeSetParams_v2(node: Handle, p: *const KernelNodeParamsV2) -> CUresult {
    guard("cuGraphKernelNodeSetParams_v2", || unsafe { kernel_params_in(node, p.cast(), kern_of_v2(p)) })
}

unsafe fn exec_kernel_params(exec: Handle, node: Handle, p: *const KernelNodeParams, kern: Handle) -> Result<(), CUresult> {
    // SAFETY: forwarded API contract.
    let work = unsafe { kernel_work(p, kern)? };
    let mut r = registry();
    let e = r.execs.get_mut(&handle_of(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let i = e.nodes.iter().position(|&n| n == handle_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if !matches!(e.work[i], Work::Kernel(_)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    e.work[i] = work;
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecKernelNodeSetParams(exec: Handle, node: Handle, p: *const KernelNodeParams) -> CUresult {
    guard("cuGraphExecKernelNodeSetParams", || unsafe { exec_kernel_params(exec, node, p, std::ptr::null_mut()) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecKernelNodeSetParams_v2(exec: Handle, node: Handle, p: *const KernelNodeParamsV2) -> CUresult {
    guard("cuGraphExecKernelNodeSetParams_v2", || unsafe { exec_kernel_params(exec, node, p.cast(), kern_of_v2(p)) })
}

fn instantiate(out: *mut Handle, g: Handle) -> Result<(), CUresult> {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut r = registry();
    let exec = r.instantiate(handle_of(g))?;
    r.retain_refs(&exec);
    let h = r.handle();
    r.execs.insert(h, exec);
    put(out, to_handle(h))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(out: *mut Handle, g: Handle, flags: u64) -> CUresult {
    guard("cuGraphInstantiateWithFlags", || {
        // AUTO_FREE_ON_LAUNCH (1), UPLOAD (2), DEVICE_LAUNCH (4), USE_NODE_PRIORITY (8): only
        // the ones that mean nothing without memory-allocation nodes or device launch.
        if flags & !(1 | 2 | 8) != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        instantiate(out, g)
    })
}

/// cuGraphInstantiate (11.0 signature, the _v2 symbol): error node and log buffer outputs.
#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate_v2(out: *mut Handle, g: Handle, err_node: *mut Handle, log: *mut std::ffi::c_char, log_size: usize) -> CUresult {
    guard("cuGraphInstantiate", || {
        if !err_node.is_null() {
            put(err_node, std::ptr::null_mut())?;
        }
        if !log.is_null() && log_size > 0 {
            // SAFETY: the caller provides `log_size` bytes at `log`.
            unsafe { log.write(0) };
        }
        instantiate(out, g)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate(out: *mut Handle, g: Handle, err_node: *mut Handle, log: *mut std::ffi::c_char, log_size: usize) -> CUresult {
    cuGraphInstantiate_v2(out, g, err_node, log, log_size)
}

/// CUDA_GRAPH_INSTANTIATE_PARAMS.
#[repr(C)]
pub struct InstantiateParams {
    flags: u64,
    upload_stream: Handle,
    err_node: Handle,
    result: c_int,
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(out: *mut Handle, g: Handle, p: *mut InstantiateParams) -> CUresult {
    guard("cuGraphInstantiateWithParams", || {
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null pointer to the application's CUDA_GRAPH_INSTANTIATE_PARAMS.
        let params = unsafe { &mut *p };
        let r = if params.flags & !(1 | 2 | 8) != 0 { Err(CUDA_ERROR_NOT_SUPPORTED) } else { instantiate(out, g) };
        params.err_node = std::ptr::null_mut();
        // CUgraphInstantiateResult: SUCCESS 0, ERROR 1, ..., NOT_SUPPORTED... 4 (flags).
        params.result = match r {
            Ok(()) => 0,
            Err(CUDA_ERROR_NOT_SUPPORTED) => 4,
            Err(_) => 1,
        };
        r
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(out: *mut Handle, g: Handle, p: *mut InstantiateParams) -> CUresult {
    cuGraphInstantiateWithParams(out, g, p)
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(exec: Handle) -> CUresult {
    guard("cuGraphExecDestroy", || {
        let mut r = registry();
        let e = r.execs.remove(&handle_of(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let dead: Vec<UserObject> = e.user_refs.iter().flat_map(|&(o, n)| r.release_user_object(o, n)).collect();
        drop(r);
        run_destructors(dead);
        Ok(())
    })
}

/// CU_USER_OBJECT_NO_DESTRUCTOR_SYNC: the one flag cuUserObjectCreate takes, and must be given.
const USER_OBJECT_NO_DESTRUCTOR_SYNC: c_uint = 1;
/// CU_GRAPH_USER_OBJECT_MOVE: the graph takes over the caller's references.
const GRAPH_USER_OBJECT_MOVE: c_uint = 1;

#[no_mangle]
pub unsafe extern "C" fn cuUserObjectCreate(out: *mut Handle, ptr: *mut std::ffi::c_void, destroy: Option<HostFn>, initial: c_uint, flags: c_uint) -> CUresult {
    guard("cuUserObjectCreate", || {
        let Some(destroy) = destroy else { return Err(CUDA_ERROR_INVALID_VALUE) };
        if out.is_null() || initial == 0 || flags != USER_OBJECT_NO_DESTRUCTOR_SYNC {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut r = registry();
        let h = r.handle();
        r.user_objects.insert(h, UserObject { refs: initial as u64, destroy, ptr: ptr as usize });
        put(out, to_handle(h))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuUserObjectRetain(o: Handle, count: c_uint) -> CUresult {
    guard("cuUserObjectRetain", || {
        let mut r = registry();
        let obj = r.user_objects.get_mut(&handle_of(o)).filter(|_| count > 0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        obj.refs += count as u64;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuUserObjectRelease(o: Handle, count: c_uint) -> CUresult {
    guard("cuUserObjectRelease", || {
        let mut r = registry();
        // Releasing more than the caller holds is undefined in CUDA; here it is refused.
        if count == 0 || r.user_objects.get(&handle_of(o)).is_none_or(|obj| obj.refs < count as u64) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dead: Vec<UserObject> = r.release_user_object(handle_of(o), count).into_iter().collect();
        drop(r);
        run_destructors(dead);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphRetainUserObject(g: Handle, o: Handle, count: c_uint, flags: c_uint) -> CUresult {
    guard("cuGraphRetainUserObject", || {
        let (g, o) = (handle_of(g), handle_of(o));
        let mut r = registry();
        if count == 0 || flags & !GRAPH_USER_OBJECT_MOVE != 0 || !r.graphs.contains_key(&g) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let obj = r.user_objects.get_mut(&o).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if flags & GRAPH_USER_OBJECT_MOVE == 0 {
            obj.refs += count as u64;
        }
        let held = r.graphs.get_mut(&g).ok_or(CUDA_ERROR_INVALID_VALUE)?.user_refs.entry(o).or_insert(0);
        *held = held.checked_add(count).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphReleaseUserObject(g: Handle, o: Handle, count: c_uint) -> CUresult {
    guard("cuGraphReleaseUserObject", || {
        let (g, o) = (handle_of(g), handle_of(o));
        let mut r = registry();
        let graph = r.graphs.get_mut(&g).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match graph.user_refs.get_mut(&o) {
            Some(held) if count > 0 && *held >= count => {
                *held -= count;
                if *held == 0 {
                    graph.user_refs.remove(&o);
                }
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        let dead: Vec<UserObject> = r.release_user_object(o, count).into_iter().collect();
        drop(r);
        run_destructors(dead);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(exec: Handle, s: Handle) -> CUresult {
    guard("cuGraphLaunch", || launch_exec(exec, s))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(exec: Handle, s: Handle) -> CUresult {
    cuGraphLaunch(exec, s)
}

/// Nothing to upload ahead of a launch: the graph lives in libcuda until it is launched.
#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload(exec: Handle, _s: Handle) -> CUresult {
    guard("cuGraphUpload", || registry().execs.get(&handle_of(exec)).map(drop).ok_or(CUDA_ERROR_INVALID_VALUE))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload_ptsz(exec: Handle, s: Handle) -> CUresult {
    cuGraphUpload(exec, s)
}

/// CUgraphExecUpdateResultInfo.
#[repr(C)]
pub struct ExecUpdateResultInfo {
    result: c_int,
    error_node: Handle,
    error_from_node: Handle,
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecUpdate_v2(exec: Handle, g: Handle, info: *mut ExecUpdateResultInfo) -> CUresult {
    guard("cuGraphExecUpdate", || {
        let (result, node) = match exec_update(exec, g) {
            Ok(()) => (0, 0),
            Err(e) => e,
        };
        if !info.is_null() {
            put(info, ExecUpdateResultInfo { result, error_node: to_handle(node), error_from_node: std::ptr::null_mut() })?;
        }
        if result == 0 { Ok(()) } else { Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecUpdate(exec: Handle, g: Handle, err_node: *mut Handle, result: *mut c_int) -> CUresult {
    guard("cuGraphExecUpdate", || {
        let (res, node) = match exec_update(exec, g) {
            Ok(()) => (0, 0),
            Err(e) => e,
        };
        if !err_node.is_null() {
            put(err_node, to_handle(node))?;
        }
        put(result, res)?;
        if res == 0 { Ok(()) } else { Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE) }
    })
}

/// For cuStreamGetCaptureInfo_v2/_v3: the dependency array handed out stays valid until the
/// next call on this thread (CUDA: until the next capture operation on the stream).
pub(crate) fn capture_info(s: Handle, status: *mut c_int, id: *mut u64, graph: *mut Handle, deps: *mut *const Handle, num_deps: *mut usize) -> Result<(), CUresult> {
    thread_local! {
        static DEPS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if status.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    legacy_not_implicated(s)?;
    let (st, cid, g, d) = capture_status(s);
    if st == 0 {
        // Not capturing: check the stream with the mediator.
        super::stream::check_stream(s)?;
    }
    put(status, st)?;
    if st == 0 {
        return Ok(());
    }
    if !id.is_null() {
        put(id, cid)?;
    }
    if !graph.is_null() {
        put(graph, to_handle(g))?;
    }
    let ptr = DEPS.with(|v| {
        let mut v = v.borrow_mut();
        *v = d.iter().map(|&n| n as usize).collect();
        v.as_ptr() as *const Handle
    });
    if !deps.is_null() {
        put(deps, ptr)?;
    }
    if !num_deps.is_null() {
        put(num_deps, d.len())?;
    }
    Ok(())
}
