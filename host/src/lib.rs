//! The vgpu mediator: serves guest CUDA sessions on a backend.

pub mod backend;
pub mod cancel;
pub mod dispatch;
pub mod profile;
pub mod server;
pub mod sim;
