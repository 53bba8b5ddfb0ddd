// CUDA arrays, 2D/3D copies, texture and surface objects. Every expectation is computed on the
// CPU from CUDA's documented behaviour, written here independently of vgpu's implementation:
// the CUDA C++ Programming Guide's "Texture Fetching" appendix (point sampling takes
// T[floor(x)]; linear filtering blends T[i], T[i+1] at i = floor(x - 0.5) with weights kept in
// 9-bit fixed point, 8 bits of them fractional; wrap takes frac(x) of normalized coordinates;
// clamp and border as the address modes say) and the runtime API reference (read modes,
// tex1Dfetch reading zero outside its buffer, surface coordinates in bytes, boundary modes).
#include "check.h"
#include <cmath>
#include <cstring>
#include <vector>

__global__ void sample2d(cudaTextureObject_t t, const float2 *at, float *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tex2D<float>(t, at[i].x, at[i].y);
}

__global__ void sample_uchar4(cudaTextureObject_t t, const float2 *at, float4 *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tex2D<float4>(t, at[i].x, at[i].y);
}

__global__ void fetch1d(cudaTextureObject_t t, int *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = tex1Dfetch<int>(t, i - 2);  // two before the buffer, two past it
}

__global__ void layered(cudaTextureObject_t t, float *out, int w, int h, int layers) {
  int x = threadIdx.x, y = blockIdx.x, l = blockIdx.y;
  if (x < w && y < h && l < layers) out[(l * h + y) * w + x] = tex2DLayered<float>(t, x + 0.5f, y + 0.5f, l);
}

__global__ void gather(cudaTextureObject_t t, float4 *out) {
  out[0] = tex2Dgather<float4>(t, 2.0f, 3.0f, 0);
}

__global__ void surf_fill(cudaSurfaceObject_t s, int w, int h) {
  int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
  if (x < w && y < h) surf2Dwrite(make_short2(x, -y), s, x * (int)sizeof(short2), y);
}

__global__ void surf_edges(cudaSurfaceObject_t s, int w, int *out) {
  short2 v;
  surf2Dread(&v, s, (w + 3) * (int)sizeof(short2), 1, cudaBoundaryModeClamp);  // clamped to x = w - 1
  out[0] = v.x;
  out[1] = v.y;
  surf2Dread(&v, s, -4 * (int)sizeof(short2), 1, cudaBoundaryModeZero);  // outside: zero
  out[2] = v.x;
  out[3] = v.y;
  surf2Dwrite(make_short2(99, 99), s, (w + 5) * (int)sizeof(short2), 0, cudaBoundaryModeZero);  // dropped
}

__global__ void surf3d_scale(cudaSurfaceObject_t s, int w, int h, int d) {
  int x = threadIdx.x, y = blockIdx.x, z = blockIdx.y;
  if (x < w && y < h && z < d) {
    float v;
    surf3Dread(&v, s, x * 4, y, z);
    surf3Dwrite(v * 2.0f + 1.0f, s, x * 4, y, z);
  }
}

// The reference: an address mode applied to texel index i of n (normalized coordinates for
// wrap and mirror), per the Programming Guide.
static int addr(int i, int n, cudaTextureAddressMode m, bool *border) {
  if (m == cudaAddressModeWrap) return ((i % n) + n) % n;
  if (m == cudaAddressModeMirror) { int k = ((i % (2 * n)) + 2 * n) % (2 * n); return k >= n ? 2 * n - 1 - k : k; }
  if (m == cudaAddressModeBorder && (i < 0 || i >= n)) { *border = true; return 0; }
  return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

static float ref_linear2d(const std::vector<float> &T, int w, int h, float x, float y, cudaTextureAddressMode m, float bc) {
  float xb = x - 0.5f, yb = y - 0.5f;
  int i = (int)floorf(xb), j = (int)floorf(yb);
  float a = roundf((xb - floorf(xb)) * 256.0f) / 256.0f, b = roundf((yb - floorf(yb)) * 256.0f) / 256.0f;
  auto tap = [&](int ii, int jj) {
    bool bo = false;
    int xi = addr(ii, w, m, &bo), yj = addr(jj, h, m, &bo);
    return bo ? bc : T[yj * w + xi];
  };
  return (1 - a) * (1 - b) * tap(i, j) + a * (1 - b) * tap(i + 1, j) + (1 - a) * b * tap(i, j + 1) + a * b * tap(i + 1, j + 1);
}

static void copies_through_arrays() {
  // A 2D float array filled from a host buffer with padded rows, read back into another.
  const int w = 37, h = 23, hp = 40;  // host pitch in floats
  std::vector<float> src(hp * h, -1.0f), back(hp * h, -2.0f);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) src[y * hp + x] = y * 100.0f + x;
  cudaChannelFormatDesc cf = cudaCreateChannelDesc<float>();
  cudaArray_t a;
  CK(cudaMallocArray(&a, &cf, w, h));
  CK(cudaMemcpy2DToArray(a, 0, 0, src.data(), hp * sizeof(float), w * sizeof(float), h, cudaMemcpyHostToDevice));
  CK(cudaMemcpy2DFromArray(back.data(), hp * sizeof(float), a, 0, 0, w * sizeof(float), h, cudaMemcpyDeviceToHost));
  for (int y = 0; y < h; y++)
    for (int x = 0; x < hp; x++) {
      float want = x < w ? src[y * hp + x] : -2.0f;  // the gaps of the destination untouched
      EXPECT(back[y * hp + x] == want, "2D round trip at (%d, %d): %f, want %f", x, y, back[y * hp + x], want);
    }
  // A sub-rectangle, array to array (via device memory with its own pitch).
  float *dev;
  size_t dpitch;
  CK(cudaMallocPitch(&dev, &dpitch, 64 * sizeof(float), 8));
  CK(cudaMemcpy2DFromArray(dev, dpitch, a, 5 * sizeof(float), 7, 10 * sizeof(float), 4, cudaMemcpyDeviceToDevice));
  std::vector<float> sub(10 * 4);
  CK(cudaMemcpy2D(sub.data(), 10 * sizeof(float), dev, dpitch, 10 * sizeof(float), 4, cudaMemcpyDeviceToHost));
  for (int y = 0; y < 4; y++)
    for (int x = 0; x < 10; x++) EXPECT(sub[y * 10 + x] == (7 + y) * 100.0f + 5 + x, "sub-rectangle at (%d, %d): %f", x, y, sub[y * 10 + x]);
  cudaChannelFormatDesc got;
  cudaExtent ext;
  unsigned int flags;
  CK(cudaArrayGetInfo(&got, &ext, &flags, a));
  EXPECT(got.x == 32 && got.f == cudaChannelFormatKindFloat && ext.width == w && ext.height == h, "array info %d %d %zu %zu", got.x, got.f, ext.width, ext.height);
  CK(cudaFree(dev));
  CK(cudaFreeArray(a));

  // A 3D array of uchar4, a box copied in at an offset from a pitched host volume, and the
  // whole array copied back out through cudaMemcpy3D.
  const int W = 9, H = 7, D = 5;
  cudaChannelFormatDesc c4 = cudaCreateChannelDesc<uchar4>();
  cudaArray_t a3;
  CK(cudaMalloc3DArray(&a3, &c4, make_cudaExtent(W, H, D)));
  std::vector<uchar4> zero(W * H * D, make_uchar4(0, 0, 0, 0)), box(6 * 4 * 3 * 2), out(W * H * D);
  cudaMemcpy3DParms p = {};
  p.srcPtr = make_cudaPitchedPtr(zero.data(), W * sizeof(uchar4), W, H);
  p.dstArray = a3;
  p.extent = make_cudaExtent(W, H, D);
  p.kind = cudaMemcpyHostToDevice;
  CK(cudaMemcpy3D(&p));
  for (size_t k = 0; k < box.size(); k++) box[k] = make_uchar4(k & 255, (k * 7) & 255, 3, 200);
  p = {};
  p.srcPtr = make_cudaPitchedPtr(box.data(), 6 * 2 * sizeof(uchar4), 6, 4);  // 12 elements a row, 6 used
  p.dstArray = a3;
  p.dstPos = make_cudaPos(2, 1, 1);
  p.extent = make_cudaExtent(6, 4, 3);
  p.kind = cudaMemcpyHostToDevice;
  CK(cudaMemcpy3D(&p));
  p = {};
  p.srcArray = a3;
  p.dstPtr = make_cudaPitchedPtr(out.data(), W * sizeof(uchar4), W, H);
  p.extent = make_cudaExtent(W, H, D);
  p.kind = cudaMemcpyDeviceToHost;
  CK(cudaMemcpy3D(&p));
  for (int z = 0; z < D; z++)
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        uchar4 v = out[(z * H + y) * W + x];
        bool in = x >= 2 && x < 8 && y >= 1 && y < 5 && z >= 1 && z < 4;
        uchar4 want = in ? box[((z - 1) * 4 + (y - 1)) * 12 + (x - 2)] : make_uchar4(0, 0, 0, 0);
        EXPECT(v.x == want.x && v.y == want.y && v.z == want.z && v.w == want.w, "3D copy at (%d, %d, %d)", x, y, z);
      }
  CK(cudaFreeArray(a3));
}

static void sampling() {
  const int w = 6, h = 5;
  std::vector<float> T(w * h);
  for (int k = 0; k < w * h; k++) T[k] = (float)((k * 37) % 11);
  cudaChannelFormatDesc cf = cudaCreateChannelDesc<float>();
  cudaArray_t a;
  CK(cudaMallocArray(&a, &cf, w, h));
  CK(cudaMemcpy2DToArray(a, 0, 0, T.data(), w * sizeof(float), w * sizeof(float), h, cudaMemcpyHostToDevice));
  cudaResourceDesc rd = {};
  rd.resType = cudaResourceTypeArray;
  rd.res.array.array = a;
  // Points: texel centers, between texels, outside, and a weight of 1/3 (kept as 85/256). None
  // is an integer, where floor(x / w * w) could go either way once normalized; every weight's
  // 256ths round the same to nearest and down.
  std::vector<float2> at = {{0.5f, 0.5f}, {1.25f, 1.25f}, {2.25f, 3.75f}, {-1.5f, 2.25f}, {7.25f, 6.75f}, {0.5f + 1.0f / 3, 2.5f}, {5.9f, 0.125f}};
  const int n = (int)at.size();
  float2 *dat;
  float *dout;
  CK(cudaMalloc(&dat, n * sizeof(float2)));
  CK(cudaMalloc(&dout, n * sizeof(float)));
  CK(cudaMemcpy(dat, at.data(), n * sizeof(float2), cudaMemcpyHostToDevice));
  cudaTextureAddressMode modes[] = {cudaAddressModeClamp, cudaAddressModeBorder, cudaAddressModeWrap, cudaAddressModeMirror};
  for (cudaTextureAddressMode m : modes)
    for (int linear = 0; linear < 2; linear++) {
      bool normalized = m == cudaAddressModeWrap || m == cudaAddressModeMirror;
      cudaTextureDesc td = {};
      td.addressMode[0] = td.addressMode[1] = m;
      td.filterMode = linear ? cudaFilterModeLinear : cudaFilterModePoint;
      td.readMode = cudaReadModeElementType;
      td.normalizedCoords = normalized;
      td.borderColor[0] = -5.0f;
      cudaTextureObject_t t;
      CK(cudaCreateTextureObject(&t, &rd, &td, nullptr));
      std::vector<float2> coords = at;
      if (normalized)
        for (auto &c : coords) c = make_float2(c.x / w, c.y / h);
      CK(cudaMemcpy(dat, coords.data(), n * sizeof(float2), cudaMemcpyHostToDevice));
      sample2d<<<1, 32>>>(t, dat, dout, n);
      CK(cudaGetLastError());
      std::vector<float> got(n);
      CK(cudaMemcpy(got.data(), dout, n * sizeof(float), cudaMemcpyDeviceToHost));
      for (int k = 0; k < n; k++) {
        float x = at[k].x, y = at[k].y, want;
        if (linear) {
          want = ref_linear2d(T, w, h, x, y, m, -5.0f);
        } else {
          bool bo = false;
          int xi = addr((int)floorf(x), w, m, &bo), yj = addr((int)floorf(y), h, m, &bo);
          want = bo ? -5.0f : T[yj * w + xi];
        }
        EXPECT(fabsf(got[k] - want) <= 2e-3f, "mode %d linear %d at (%g, %g): %f, want %f", (int)m, linear, x, y, got[k], want);
      }
      CK(cudaDestroyTextureObject(t));
    }
  // The resource descriptor comes back as given.
  cudaTextureDesc td = {};
  td.addressMode[0] = td.addressMode[1] = cudaAddressModeClamp;
  cudaTextureObject_t t;
  CK(cudaCreateTextureObject(&t, &rd, &td, nullptr));
  cudaResourceDesc back;
  CK(cudaGetTextureObjectResourceDesc(&back, t));
  EXPECT(back.resType == cudaResourceTypeArray && back.res.array.array == a, "resource descriptor of the texture");
  // tex2Dgather: channel 0 of the four texels of the bilinear footprint at (2, 3): columns 1-2,
  // rows 2-3, in the order (i, j+1), (i+1, j+1), (i+1, j), (i, j).
  float4 *dg;
  cudaArray_t ag;
  CK(cudaMallocArray(&ag, &cf, w, h, cudaArrayTextureGather));
  CK(cudaMemcpy2DToArray(ag, 0, 0, T.data(), w * sizeof(float), w * sizeof(float), h, cudaMemcpyHostToDevice));
  rd.res.array.array = ag;
  cudaTextureObject_t tg;
  CK(cudaCreateTextureObject(&tg, &rd, &td, nullptr));
  CK(cudaMalloc(&dg, sizeof(float4)));
  gather<<<1, 1>>>(tg, dg);
  float4 g;
  CK(cudaMemcpy(&g, dg, sizeof(float4), cudaMemcpyDeviceToHost));
  EXPECT(g.x == T[3 * w + 1] && g.y == T[3 * w + 2] && g.z == T[2 * w + 2] && g.w == T[2 * w + 1], "gather: %g %g %g %g", g.x, g.y, g.z, g.w);
  CK(cudaDestroyTextureObject(t));
  CK(cudaDestroyTextureObject(tg));
  CK(cudaFree(dg));
  CK(cudaFreeArray(a));
  CK(cudaFreeArray(ag));
  CK(cudaFree(dat));
  CK(cudaFree(dout));
}

static void read_modes_and_linear_memory() {
  // uchar4 read as normalized floats (v / 255), point sampling, unnormalized coordinates.
  const int w = 4, h = 2;
  std::vector<uchar4> px(w * h);
  for (int k = 0; k < w * h; k++) px[k] = make_uchar4(k * 30, 255 - k, 0, 128);
  cudaChannelFormatDesc c4 = cudaCreateChannelDesc<uchar4>();
  cudaArray_t a;
  CK(cudaMallocArray(&a, &c4, w, h));
  CK(cudaMemcpy2DToArray(a, 0, 0, px.data(), w * sizeof(uchar4), w * sizeof(uchar4), h, cudaMemcpyHostToDevice));
  cudaResourceDesc rd = {};
  rd.resType = cudaResourceTypeArray;
  rd.res.array.array = a;
  cudaTextureDesc td = {};
  td.addressMode[0] = td.addressMode[1] = cudaAddressModeClamp;
  td.filterMode = cudaFilterModePoint;
  td.readMode = cudaReadModeNormalizedFloat;
  cudaTextureObject_t t;
  CK(cudaCreateTextureObject(&t, &rd, &td, nullptr));
  std::vector<float2> at = {{0.5f, 0.5f}, {3.5f, 1.5f}, {9.0f, -3.0f}};
  float2 *dat;
  float4 *dout;
  CK(cudaMalloc(&dat, at.size() * sizeof(float2)));
  CK(cudaMalloc(&dout, at.size() * sizeof(float4)));
  CK(cudaMemcpy(dat, at.data(), at.size() * sizeof(float2), cudaMemcpyHostToDevice));
  sample_uchar4<<<1, 32>>>(t, dat, dout, (int)at.size());
  std::vector<float4> got(at.size());
  CK(cudaMemcpy(got.data(), dout, at.size() * sizeof(float4), cudaMemcpyDeviceToHost));
  int idx[] = {0, 7, 3};  // (9, -3) clamps to (3, 0)
  for (size_t k = 0; k < at.size(); k++) {
    uchar4 p = px[idx[k]];
    EXPECT(got[k].x == p.x / 255.0f && got[k].y == p.y / 255.0f && got[k].z == 0.0f && got[k].w == p.w / 255.0f,
           "normalized read %zu: %f %f %f %f", k, got[k].x, got[k].y, got[k].z, got[k].w);
  }
  CK(cudaDestroyTextureObject(t));
  CK(cudaFreeArray(a));
  CK(cudaFree(dat));
  CK(cudaFree(dout));

  // tex1Dfetch on linear memory: element indices, zero outside the buffer.
  const int n = 10;
  std::vector<int> v(n);
  for (int k = 0; k < n; k++) v[k] = k * k - 7;
  int *buf, *res;
  CK(cudaMalloc(&buf, n * sizeof(int)));
  CK(cudaMalloc(&res, (n + 4) * sizeof(int)));
  CK(cudaMemcpy(buf, v.data(), n * sizeof(int), cudaMemcpyHostToDevice));
  cudaResourceDesc lr = {};
  lr.resType = cudaResourceTypeLinear;
  lr.res.linear.devPtr = buf;
  lr.res.linear.desc = cudaCreateChannelDesc<int>();
  lr.res.linear.sizeInBytes = n * sizeof(int);
  cudaTextureDesc ltd = {};
  ltd.readMode = cudaReadModeElementType;
  CK(cudaCreateTextureObject(&t, &lr, &ltd, nullptr));
  fetch1d<<<1, 32>>>(t, res, n + 4);
  std::vector<int> r(n + 4);
  CK(cudaMemcpy(r.data(), res, (n + 4) * sizeof(int), cudaMemcpyDeviceToHost));
  for (int k = 0; k < n + 4; k++) {
    int i = k - 2, want = i >= 0 && i < n ? v[i] : 0;
    EXPECT(r[k] == want, "tex1Dfetch(%d) = %d, want %d", i, r[k], want);
  }
  CK(cudaDestroyTextureObject(t));
  CK(cudaFree(buf));
  CK(cudaFree(res));
}

static void layers_and_surfaces() {
  // A layered 2D array: each layer its own image.
  const int w = 8, h = 3, L = 4;
  std::vector<float> img(w * h * L), got(w * h * L);
  for (size_t k = 0; k < img.size(); k++) img[k] = (float)k * 0.5f;
  cudaChannelFormatDesc cf = cudaCreateChannelDesc<float>();
  cudaArray_t a;
  CK(cudaMalloc3DArray(&a, &cf, make_cudaExtent(w, h, L), cudaArrayLayered));
  cudaMemcpy3DParms p = {};
  p.srcPtr = make_cudaPitchedPtr(img.data(), w * sizeof(float), w, h);
  p.dstArray = a;
  p.extent = make_cudaExtent(w, h, L);
  p.kind = cudaMemcpyHostToDevice;
  CK(cudaMemcpy3D(&p));
  cudaResourceDesc rd = {};
  rd.resType = cudaResourceTypeArray;
  rd.res.array.array = a;
  cudaTextureDesc td = {};
  cudaTextureObject_t t;
  CK(cudaCreateTextureObject(&t, &rd, &td, nullptr));
  float *dout;
  CK(cudaMalloc(&dout, img.size() * sizeof(float)));
  layered<<<dim3(h, L), w>>>(t, dout, w, h, L);
  CK(cudaMemcpy(got.data(), dout, img.size() * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t k = 0; k < img.size(); k++) EXPECT(got[k] == img[k], "layered texel %zu: %f, want %f", k, got[k], img[k]);
  CK(cudaDestroyTextureObject(t));
  CK(cudaFreeArray(a));
  CK(cudaFree(dout));

  // A 2D surface of short2: written by a kernel, x in bytes; boundary modes at the edges.
  const int sw = 13, sh = 4;
  cudaChannelFormatDesc cs = cudaCreateChannelDesc<short2>();
  CK(cudaMallocArray(&a, &cs, sw, sh, cudaArraySurfaceLoadStore));
  cudaResourceDesc sr = {};
  sr.resType = cudaResourceTypeArray;
  sr.res.array.array = a;
  cudaSurfaceObject_t s;
  CK(cudaCreateSurfaceObject(&s, &sr));
  surf_fill<<<dim3(1, sh), 32>>>(s, sw, sh);
  int *edges;
  CK(cudaMalloc(&edges, 4 * sizeof(int)));
  surf_edges<<<1, 1>>>(s, sw, edges);
  CK(cudaGetLastError());
  std::vector<short2> back(sw * sh);
  CK(cudaMemcpy2DFromArray(back.data(), sw * sizeof(short2), a, 0, 0, sw * sizeof(short2), sh, cudaMemcpyDeviceToHost));
  for (int y = 0; y < sh; y++)
    for (int x = 0; x < sw; x++) EXPECT(back[y * sw + x].x == x && back[y * sw + x].y == -y, "surface at (%d, %d): %d %d", x, y, back[y * sw + x].x, back[y * sw + x].y);
  int e[4];
  CK(cudaMemcpy(e, edges, sizeof e, cudaMemcpyDeviceToHost));
  EXPECT(e[0] == sw - 1 && e[1] == -1 && e[2] == 0 && e[3] == 0, "surface boundary modes: %d %d %d %d", e[0], e[1], e[2], e[3]);
  CK(cudaDestroySurfaceObject(s));
  CK(cudaFreeArray(a));
  CK(cudaFree(edges));

  // A 3D surface read and written in place.
  const int W = 5, H = 4, D = 3;
  std::vector<float> vol(W * H * D), res(W * H * D);
  for (size_t k = 0; k < vol.size(); k++) vol[k] = (float)k;
  CK(cudaMalloc3DArray(&a, &cf, make_cudaExtent(W, H, D), cudaArraySurfaceLoadStore));
  p = {};
  p.srcPtr = make_cudaPitchedPtr(vol.data(), W * sizeof(float), W, H);
  p.dstArray = a;
  p.extent = make_cudaExtent(W, H, D);
  p.kind = cudaMemcpyHostToDevice;
  CK(cudaMemcpy3D(&p));
  sr.res.array.array = a;
  CK(cudaCreateSurfaceObject(&s, &sr));
  surf3d_scale<<<dim3(H, D), W>>>(s, W, H, D);
  p = {};
  p.srcArray = a;
  p.dstPtr = make_cudaPitchedPtr(res.data(), W * sizeof(float), W, H);
  p.extent = make_cudaExtent(W, H, D);
  p.kind = cudaMemcpyDeviceToHost;
  CK(cudaMemcpy3D(&p));
  for (size_t k = 0; k < vol.size(); k++) EXPECT(res[k] == vol[k] * 2 + 1, "3D surface %zu: %f", k, res[k]);
  CK(cudaDestroySurfaceObject(s));
  CK(cudaFreeArray(a));
}

// The driver's 1D array copies (cuMemcpyHtoA and co.), which cudart no longer wraps: bytes at
// an offset of a 1D array.
static void driver_array_copies() {
  typedef int (*HtoA)(void *, size_t, const void *, size_t);
  typedef int (*AtoH)(void *, void *, size_t, size_t);
  typedef int (*DtoA)(void *, size_t, unsigned long long, size_t);
  typedef int (*AtoD)(unsigned long long, void *, size_t, size_t);
  void *htoa, *atoh, *dtoa, *atod;
  cudaDriverEntryPointQueryResult q;
  CK(cudaGetDriverEntryPointByVersion("cuMemcpyHtoA", &htoa, 12000, cudaEnableDefault, &q));
  CK(cudaGetDriverEntryPointByVersion("cuMemcpyAtoH", &atoh, 12000, cudaEnableDefault, &q));
  CK(cudaGetDriverEntryPointByVersion("cuMemcpyDtoA", &dtoa, 12000, cudaEnableDefault, &q));
  CK(cudaGetDriverEntryPointByVersion("cuMemcpyAtoD", &atod, 12000, cudaEnableDefault, &q));
  cudaChannelFormatDesc cf = cudaCreateChannelDesc<float>();
  cudaArray_t a;
  CK(cudaMallocArray(&a, &cf, 64));
  std::vector<float> v(64), back(64, -1.0f);
  for (int k = 0; k < 64; k++) v[k] = k * 1.5f;
  EXPECT(((HtoA)htoa)(a, 0, v.data(), 64 * sizeof(float)) == 0, "cuMemcpyHtoA");
  float *dev;
  CK(cudaMalloc(&dev, 64 * sizeof(float)));
  CK(cudaMemset(dev, 0, 64 * sizeof(float)));
  EXPECT(((AtoD)atod)((unsigned long long)dev, a, 16 * sizeof(float), 32 * sizeof(float)) == 0, "cuMemcpyAtoD");
  EXPECT(((DtoA)dtoa)(a, 0, (unsigned long long)dev, 8 * sizeof(float)) == 0, "cuMemcpyDtoA");
  EXPECT(((AtoH)atoh)(back.data(), a, 0, 64 * sizeof(float)) == 0, "cuMemcpyAtoH");
  for (int k = 0; k < 64; k++) {
    float want = k < 8 ? v[16 + k] : v[k];  // elements 16.. copied out, then back to 0..7
    EXPECT(back[k] == want, "1D array element %d: %f, want %f", k, back[k], want);
  }
  EXPECT(((AtoH)atoh)(back.data(), a, 60 * sizeof(float), 8 * sizeof(float)) != 0, "a read past the array's end");
  CK(cudaFree(dev));
  CK(cudaFreeArray(a));
}

int main() {
  driver_array_copies();
  copies_through_arrays();
  sampling();
  read_modes_and_linear_memory();
  layers_and_surfaces();
  // A surface object needs an array made for surface load/store.
  cudaChannelFormatDesc cf = cudaCreateChannelDesc<float>();
  cudaArray_t a;
  CK(cudaMallocArray(&a, &cf, 4, 4));
  cudaResourceDesc sr = {};
  sr.resType = cudaResourceTypeArray;
  sr.res.array.array = a;
  cudaSurfaceObject_t s;
  EXPECT(cudaCreateSurfaceObject(&s, &sr) != cudaSuccess, "a surface over an array without cudaArraySurfaceLoadStore");
  (void)cudaGetLastError();
  CK(cudaFreeArray(a));
  CK(cudaDeviceSynchronize());
  printf("PASS\n");
  return 0;
}
