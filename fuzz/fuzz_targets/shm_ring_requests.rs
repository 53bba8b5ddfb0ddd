#![no_main]
//! See vgpu_host::fuzz::shm_ring_requests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_host::fuzz::shm_ring_requests(data));
