//! A PTX interpreter for the sim backend.
//!
//! `parse` turns PTX text (as nvcc emits it) into pre-decoded instructions: registers become
//! indices into a per-thread register file, labels become instruction indices, types and
//! operands are resolved once. `exec` runs a launch: blocks spread over host threads, the
//! threads of a block each with explicit state (pc + registers), so a thread can stop at
//! `bar.sync` and resume when the whole block has arrived. `global` is global memory shared by
//! the host threads (atomic accesses).
//!
//! PTX and launch parameters come from an untrusted guest: nothing here panics on any input,
//! memory is reached only through [`Memory`] (the session's own allocations), shared and local
//! memory are bounded, and a launch has an instruction budget.

mod exec;
mod float;
pub mod global;
pub mod heap;
mod parse;
mod printf;
pub mod texture;

pub use exec::{launch, launch_with_budget, with_engine, with_jit_heat, Engine, LaunchConfig, LaunchStats, SimTotals, INSTRUCTION_BUDGET, SIM_TOTALS};
pub use parse::{GlobalVar, Kernel, Module, ParamInfo, PtxError, Rejection, VarSpace};

/// Global device memory as the interpreter sees it: the session's allocations, each as (device
/// address, host bytes). A launch reaches nothing else; every access is bounds-checked.
pub trait Memory {
    fn regions(&mut self) -> Vec<(u64, &mut [u8])>;

    /// Global memory for one launch: `regions`, unless the owner keeps a table of them.
    fn global(&mut self) -> global::Global<'_> {
        global::Global::new(self.regions())
    }

    /// The device heap for kernels' malloc/free, made on first use (one of `regions` from
    /// then on). None: this memory has none (kernels that allocate cannot run on it).
    fn heap(&mut self) -> Result<Option<std::sync::Arc<heap::DeviceHeap>>, ExecError> {
        Ok(None)
    }

    /// The device address of the cooperative groups grid workspace, made on first use.
    fn grid_workspace(&mut self) -> Result<Option<u64>, ExecError> {
        Ok(None)
    }

    /// The texture and surface objects kernels may name (as they are at the launch).
    fn objects(&self) -> std::sync::Arc<texture::Objects> {
        std::sync::Arc::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemFault {
    pub addr: u64,
    pub len: u64,
}

/// Why a launch failed. The message names the instruction and its PTX line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// Out-of-bounds or unmapped access.
    IllegalAddress { addr: u64, len: u64, space: &'static str, at: String },
    Misaligned { addr: u64, at: String },
    /// An instruction the interpreter does not implement.
    Unsupported(String),
    Trap(String),
    /// A device-side `assert` failed (its message).
    Assert(String),
    /// Threads of a block wait at different barriers forever.
    BarrierDeadlock(String),
    /// Something the PTX ISA leaves undefined (e.g. a warp collective whose membermask leaves
    /// out the executing lane): failing beats guessing what a GPU would do.
    Undefined(String),
    /// The launch ran past its instruction budget (an endless loop, or simply too big for sim).
    Timeout(u64),
    /// The launch ran past its VM's execution time limit (ms).
    TimeLimit(u64),
    /// Launch configuration the interpreter cannot honour (too much shared/local memory).
    OutOfResources(String),
    /// The client went away while its kernel ran (see crate::cancel).
    Cancelled,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::IllegalAddress { addr, len, space, at } => {
                write!(f, "illegal {space} memory access of {len} bytes at {addr:#x} by {at}")
            }
            ExecError::Misaligned { addr, at } => write!(f, "misaligned address {addr:#x} in {at}"),
            ExecError::Unsupported(s) => write!(f, "unsupported PTX: {s}"),
            ExecError::Trap(at) => write!(f, "trap executed at {at}"),
            ExecError::Assert(m) => write!(f, "device-side assert triggered: {m}"),
            ExecError::BarrierDeadlock(s) => write!(f, "barrier deadlock: {s}"),
            ExecError::Undefined(s) => write!(f, "undefined behaviour: {s}"),
            ExecError::Timeout(n) => write!(f, "launch exceeded the sim backend's budget of {n} instructions"),
            ExecError::TimeLimit(ms) => write!(f, "launch stopped: it ran past this VM's execution time limit of {ms} ms"),
            ExecError::OutOfResources(s) => write!(f, "{s}"),
            ExecError::Cancelled => write!(f, "stopped: the client disconnected or was evicted"),
        }
    }
}

#[cfg(test)]
mod tests;
