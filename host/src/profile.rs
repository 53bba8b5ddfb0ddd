//! The device a backend reports to guests. The sim backend takes it whole from here; the cuda
//! backend will take it from the physical GPU.

use vgpu_uapi::cuda::{attr, DEVICE_ATTRIBUTE_SLOTS};
use vgpu_uapi::proto::DeviceInfo;

#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProfile {
    pub name: String,
    pub total_mem: u64,
    pub cc_major: i32,
    pub cc_minor: i32,
    pub sm_count: i32,
    pub pci_domain: u32,
    pub pci_bus: u32,
    pub pci_device: u32,
    /// Seed for the device UUID, so that one profile always reports the same UUID.
    pub uuid_seed: u64,
}

impl Default for DeviceProfile {
    /// An H100 80GB HBM3 (SXM5), as the VGPU-STUB device presents itself.
    fn default() -> Self {
        DeviceProfile {
            name: "NVIDIA H100 80GB HBM3".into(),
            total_mem: 80 << 30,
            cc_major: 9,
            cc_minor: 0,
            sm_count: 132,
            pci_domain: 0,
            pci_bus: 0,
            pci_device: 5,
            uuid_seed: 0x7667_7075_0000_0001,
        }
    }
}

impl DeviceProfile {
    /// Deterministic RFC 4122 version-4-shaped UUID from the seed (splitmix64).
    pub fn uuid(&self) -> [u8; 16] {
        let mut x = self.uuid_seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&next().to_le_bytes());
        u[8..].copy_from_slice(&next().to_le_bytes());
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    pub fn device_info(&self) -> DeviceInfo {
        let mut name = [0u8; 96];
        let n = self.name.len().min(name.len() - 1);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        let mut a = [0i32; DEVICE_ATTRIBUTE_SLOTS];
        // Hopper values (what an H100 SXM5 reports); the ones not listed here are 0.
        for (id, v) in [
            (attr::MAX_THREADS_PER_BLOCK, 1024),
            (attr::MAX_BLOCK_DIM_X, 1024),
            (attr::MAX_BLOCK_DIM_Y, 1024),
            (attr::MAX_BLOCK_DIM_Z, 64),
            (attr::MAX_GRID_DIM_X, i32::MAX),
            (attr::MAX_GRID_DIM_Y, 65535),
            (attr::MAX_GRID_DIM_Z, 65535),
            (attr::MAX_SHARED_MEMORY_PER_BLOCK, 49152),
            (attr::TOTAL_CONSTANT_MEMORY, 65536),
            (attr::WARP_SIZE, 32),
            (attr::MAX_PITCH, i32::MAX),
            (attr::MAX_REGISTERS_PER_BLOCK, 65536),
            (attr::CLOCK_RATE, 1_980_000),
            (attr::TEXTURE_ALIGNMENT, 512),
            (attr::GPU_OVERLAP, 1),
            (attr::MULTIPROCESSOR_COUNT, self.sm_count),
            (attr::KERNEL_EXEC_TIMEOUT, 0),
            (attr::INTEGRATED, 0),
            (attr::CAN_MAP_HOST_MEMORY, 1),
            (attr::COMPUTE_MODE, 0),
            (attr::CONCURRENT_KERNELS, 1),
            (attr::ECC_ENABLED, 1),
            (attr::PCI_BUS_ID, self.pci_bus as i32),
            (attr::PCI_DEVICE_ID, self.pci_device as i32),
            (attr::PCI_DOMAIN_ID, self.pci_domain as i32),
            (attr::TCC_DRIVER, 0),
            (attr::MEMORY_CLOCK_RATE, 2_619_000),
            (attr::GLOBAL_MEMORY_BUS_WIDTH, 5120),
            (attr::L2_CACHE_SIZE, 52_428_800),
            (attr::MAX_THREADS_PER_MULTIPROCESSOR, 2048),
            (attr::ASYNC_ENGINE_COUNT, 3),
            (attr::UNIFIED_ADDRESSING, 1),
            (attr::COMPUTE_CAPABILITY_MAJOR, self.cc_major),
            (attr::COMPUTE_CAPABILITY_MINOR, self.cc_minor),
            (attr::STREAM_PRIORITIES_SUPPORTED, 1),
            (attr::GLOBAL_L1_CACHE_SUPPORTED, 1),
            (attr::LOCAL_L1_CACHE_SUPPORTED, 1),
            (attr::MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 233_472),
            (attr::MAX_REGISTERS_PER_MULTIPROCESSOR, 65536),
            // Managed memory is libcuda's own (it reports 1: userlib/cuda/src/driver/device.rs).
            (attr::MANAGED_MEMORY, 0),
            (attr::MULTI_GPU_BOARD, 0),
            (attr::SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO, 2),
            (attr::COMPUTE_PREEMPTION_SUPPORTED, 1),
            (attr::MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 232_448),
            (attr::MAX_BLOCKS_PER_MULTIPROCESSOR, 32),
            (attr::MAX_PERSISTING_L2_CACHE_SIZE, 82_837_504),
            (attr::RESERVED_SHARED_MEMORY_PER_BLOCK, 1024),
            (attr::VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 1),
            // Stream-ordered allocation and pools are served by libcuda (driver/pool.rs).
            (attr::MEMORY_POOLS_SUPPORTED, 1),
            // Cooperative launches: the sim keeps every block of one resident; the cuda
            // backend launches it with cuLaunchCooperativeKernel.
            (attr::COOPERATIVE_LAUNCH, 1),
            // cuMemHostRegister: libcuda shares the pages with the mediator (a guest's driver
            // pins them), tests/cuda/host_register.cu.
            (attr::HOST_REGISTER_SUPPORTED, 1),
            // Sharing between processes of a VM (IPC handles, VMM memory as POSIX file
            // descriptors): the sim maps one memfd in each (host/src/share.rs). Not fabric
            // handles (multi-node NVLink), nor shareable memory pools.
            (attr::HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, 1),
            (attr::IPC_EVENT_SUPPORTED, 1),
            (attr::HANDLE_TYPE_FABRIC_SUPPORTED, 0),
            (attr::MEMPOOL_SUPPORTED_HANDLE_TYPES, 0),
        ] {
            a[id] = v;
        }
        DeviceInfo {
            name,
            uuid: self.uuid(),
            total_mem: self.total_mem,
            pci_domain: self.pci_domain,
            pci_bus: self.pci_bus,
            pci_device: self.pci_device,
            attrs: a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_is_an_h100() {
        let d = DeviceProfile::default().device_info();
        assert_eq!(d.name_str(), "NVIDIA H100 80GB HBM3");
        assert_eq!(d.attrs[attr::COMPUTE_CAPABILITY_MAJOR], 9);
        assert_eq!(d.attrs[attr::MULTIPROCESSOR_COUNT], 132);
        assert_eq!(d.total_mem, 85_899_345_920);
        assert_eq!(d.uuid, DeviceProfile::default().uuid(), "UUID is stable");
        assert_eq!(d.uuid[6] >> 4, 4);
    }
}
