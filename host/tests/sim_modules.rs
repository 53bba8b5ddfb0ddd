//! Modules on the sim backend's session interface: what NVVM and nvcc emit loads and runs
//! (address initializers, labels before a closing brace, `::` state-space qualifiers), and a
//! kernel using an instruction the sim lacks is refused when looked up, with NOT_SUPPORTED.

use vgpu_host::backend::{Backend, LaunchDims};
use vgpu_host::profile::DeviceProfile;
use vgpu_host::sim::SimBackend;
use vgpu_uapi::cuda::*;

const PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64
.global .align 8 .u32 table[4] = {10, 20, 30, 40};
.global .align 8 .u64 ptrs[2] = {generic(table), generic(table)+8};
.global .align 8 .u64 plain = table+4;

.visible .entry follow(.param .u64 out)
{
    .reg .b64 %rd<6>;
    .reg .b32 %r<4>;
    .reg .pred %p<2>;
    ld.param.u64 %rd1, [out];
    ld.global.u64 %rd2, [ptrs+8];
    ld.u32 %r1, [%rd2];
    ld.global.u64 %rd3, [plain];
    ld.u32 %r2, [%rd3];
    add.s32 %r3, %r1, %r2;
    setp.eq.s32 %p1, %r3, 50;
    @%p1 bra $L__done;
    mov.u32 %r3, 0;
$L__done:
    st.global.u32 [%rd1], %r3;
    ret;
$L__unused:
}

.visible .entry lacking(.param .u64 out)
{
    .reg .b32 %r<3>;
    mov.u32 %r1, 1;
    sust.p.1d.b32.trap [out, {%r1}], {%r1};
    ret;
}
"#;

#[test]
fn address_initializers_labels_before_braces_and_lacking_instructions() {
    let backend = SimBackend::new(DeviceProfile::default(), 64 << 20);
    let mut s = backend.open_session(0, 1, false).unwrap();
    let m = s.module_load(PTX.as_bytes()).unwrap();
    // ptrs[1] = &table[2] (30), plain = &table[1] (20): the kernel adds what they point at.
    let (ptrs, size) = s.module_get_global(m, "ptrs").unwrap();
    let (table, _) = s.module_get_global(m, "table").unwrap();
    assert_eq!(size, 16);
    let mut b = [0u8; 16];
    s.read(ptrs, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), table);
    assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), table + 8);
    let (f, _) = s.module_get_function(m, "follow").unwrap();
    let out = s.mem_alloc(4).unwrap();
    let dims = LaunchDims { grid: [1, 1, 1], block: [1, 1, 1], dynamic_shared_bytes: 0, stream: 0, cooperative: false };
    s.launch(f.handle, dims, &out.to_le_bytes()).unwrap();
    s.synchronize().unwrap();
    let mut r = [0u8; 4];
    s.read(out, &mut r).unwrap();
    assert_eq!(u32::from_le_bytes(r), 50);
    let e = s.module_get_function(m, "lacking").unwrap_err();
    assert_eq!(e.code, CUDA_ERROR_NOT_SUPPORTED, "{}", e.message);
    assert!(e.message.contains("sust.p.1d.b32.trap"), "{}", e.message);
    // An initializer naming something that is not a variable of the module: invalid PTX.
    let bad = PTX.replace("generic(table)+8", "generic(nothing)");
    assert_eq!(s.module_load(bad.as_bytes()).unwrap_err().code, CUDA_ERROR_INVALID_PTX);
}
