//! The VGPU-STUB device's parts, shared by the `vgpu-stub` binary (main.rs: the vfio-user
//! server) and the fuzz targets: the BAR0 register model, guest RAM, and the channels that
//! carry descriptors between guest RAM and the mediator.

pub mod channels;
pub mod device;
pub mod fuzz;
pub mod identity;
pub mod link;
pub mod ram;
