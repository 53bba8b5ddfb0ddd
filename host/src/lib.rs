//! The vgpu mediator: serves guest CUDA sessions on a backend, sharing each GPU among VMs.

pub mod admin;
pub mod backend;
pub mod cancel;
pub mod config;
pub mod cuda;
pub mod dispatch;
pub mod fuzz;
pub mod guest;
pub mod input;
pub mod mediator;
pub mod metrics;
pub mod profile;
pub mod sched;
pub mod server;
pub mod share;
pub mod sim;
pub mod vms;
pub mod worker;
