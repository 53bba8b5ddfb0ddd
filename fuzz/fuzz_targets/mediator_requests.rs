#![no_main]
//! See vgpu_host::fuzz::mediator_requests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vgpu_host::fuzz::mediator_requests(data));
