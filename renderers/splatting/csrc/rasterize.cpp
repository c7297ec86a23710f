// CPU rasterizer for 3D Gaussian splatting with a hand-written backward.
//
// Semantics follow gsplat 1.5.3 "classic" 3DGS (IntersectTile.cu, RasterizeToPixels3DGS{Fwd,Bwd}.cu):
// tile binning by the square [mean - radius, mean + radius], per-tile depth order, pixel centres at
// +0.5, alpha = min(0.999, opacity * exp(-sigma)) skipped below 1/255, exclusive early termination
// when transmittance would drop to <= 1e-4, background weighted by the final transmittance.
//
// Each call bins Gaussians to tiles (count, prefix sum, fill in global depth order) and then works
// on (camera, tile) pairs in parallel, in one OpenMP region per pass (waking threads is costly).
// The backward writes per-Gaussian gradients to one slot per (Gaussian, tile) intersection and
// sums each Gaussian's slots at the end: no atomics, and results do not depend on the thread count.
#include <torch/extension.h>

#include "lanes.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <vector>

namespace {

constexpr float kAlphaMin = 1.f / 255.f;  // gsplat ALPHA_THRESHOLD
constexpr float kAlphaMax = 0.999f;
constexpr float kTransmittanceMin = 1e-4f;
constexpr int kPrefetch = 4;  // Gaussians ahead in a tile's list

// Gradient slot layout per intersection: d/d(mean x, y), d/d(conic a, b, c), d/d(opacity),
// d/d(colour[D]), then |d/d(mean)| summed per pixel (absgrad only).
constexpr int kSlotMean = 0, kSlotConic = 2, kSlotOpacity = 5, kSlotColor = 6;

inline int clamp_to_int(float v, int lo, int hi) {  // also safe for huge or infinite v
  return static_cast<int>(std::min(std::max(v, static_cast<float>(lo)), static_cast<float>(hi)));
}

// A Gaussian prepared for compositing: its parameters plus conservative bounds of the pixels where
// alpha >= 1/255 is possible: sigma <= sigma_cut, hence |x + 0.5 - mean x| <= x_ext (same for y).
// The exact test stays per pixel; the bounds only skip pixels that surely fail it.
struct Splat {
  float x, y;     // 2D mean [px]
  float a, b, c;  // conic: inverse 2D covariance (upper triangle)
  float o;        // opacity
  float x_ext, y_ext, sigma_cut;
  enum Kind : int32_t { kInvisible, kEllipse, kWholeTile } kind;
};

Splat prepare(const float* mean, const float* conic, float opacity) {
  Splat s{mean[0], mean[1], conic[0], conic[1], conic[2], opacity, 0.f, 0.f, INFINITY, Splat::kWholeTile};
  if (!(opacity >= kAlphaMin)) {  // alpha = min(0.999, o exp(-sigma)) < 1/255 wherever sigma >= 0
    s.kind = Splat::kInvisible;
    return s;
  }
  const double a = s.a, b = s.b, c = s.c, det = a * c - b * b;
  if (!(a > 0.0 && det > 0.0 && std::isfinite(det) && std::isfinite(s.x) && std::isfinite(s.y)))
    return s;  // sigma may be negative or the conic degenerate: test every pixel of the tile
  // sigma <= log(255 o), widened by a margin for float rounding of sigma, which grows with the
  // conic's condition a c / det through cancellation; the ellipse sigma = cut bounds x and y.
  const double sigma_max = std::log(opacity / static_cast<double>(kAlphaMin));
  const double cut = sigma_max + (1e-3 + 1e-6 * a * c / det) * (1.0 + sigma_max);
  s.kind = Splat::kEllipse;
  s.sigma_cut = static_cast<float>(cut);
  s.x_ext = static_cast<float>(std::sqrt(2.0 * cut * c / det));
  s.y_ext = static_cast<float>(std::sqrt(2.0 * cut * a / det));
  return s;
}

// Raw pointers and sizes shared by all kernels. Index g is flat over cameras: c * N + n.
struct Problem {
  int64_t C, N, D;
  int W, H, ts, TW, TH;
  const float* means2d;      // [C, N, 2]
  const float* conics;       // [C, N, 3]
  const float* colors;       // [C, N, D]
  const float* opacities;    // [C, N]
  const float* backgrounds;  // [C, D] or nullptr
  Splat* splats;              // [C * N]: prepared by the forward, kept for the backward
  const int32_t* tile_offsets = nullptr;  // [C * TH * TW + 1]
  const int32_t* isect_ids = nullptr;     // [n_isects] flat Gaussian index, depth-sorted per tile

  Problem(const at::Tensor& means2d_, const at::Tensor& conics_, const at::Tensor& colors_,
          const at::Tensor& opacities_, const c10::optional<at::Tensor>& backgrounds_, int width, int height,
          int tile_size, const at::Tensor& splat_bytes)
      : C(means2d_.size(0)), N(means2d_.size(1)), D(colors_.size(2)), W(width), H(height), ts(tile_size),
        TW((width + tile_size - 1) / tile_size), TH((height + tile_size - 1) / tile_size),
        means2d(means2d_.data_ptr<float>()), conics(conics_.data_ptr<float>()),
        colors(colors_.data_ptr<float>()), opacities(opacities_.data_ptr<float>()),
        backgrounds(backgrounds_ ? backgrounds_->data_ptr<float>() : nullptr),
        splats(reinterpret_cast<Splat*>(splat_bytes.data_ptr<uint8_t>())) {
    TORCH_CHECK(splat_bytes.numel() == C * N * static_cast<int64_t>(sizeof(Splat)), "rasterize: bad splat buffer");
  }

  int64_t tiles() const { return C * TH * TW; }
};

// Float -> uint32 key with the same order, so the depth sort is a total order even with NaNs.
inline uint32_t depth_key(float depth) {
  uint32_t u;
  std::memcpy(&u, &depth, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Bins {
  at::Tensor tile_offsets;   // [C * TH * TW + 1] int32: start of each tile's list
  at::Tensor isect_ids;      // [n_isects] int32: flat Gaussian index, by depth then index per tile
  at::Tensor isect_slots;    // [n_isects] int32: gradient slot (Gaussian-major intersection index)
  at::Tensor gauss_offsets;  // [C * N + 1] int32: start of each Gaussian's slots
};

// Tiles covered by the square [mean - radius, mean + radius], as gsplat's intersect_tile.
struct TileRect {
  int x0 = 0, x1 = 0, y0 = 0, y1 = 0;
  int count() const { return (x1 - x0) * (y1 - y0); }
};

TileRect tile_rect(const Problem& P, const int32_t* radii, int64_t g) {
  TileRect r;
  const float rx = static_cast<float>(radii[2 * g]), ry = static_cast<float>(radii[2 * g + 1]);
  const float mx = P.means2d[2 * g], my = P.means2d[2 * g + 1];
  if (rx <= 0.f || ry <= 0.f || !std::isfinite(mx) || !std::isfinite(my)) return r;
  const float ts = static_cast<float>(P.ts);
  const float tx = mx / ts, ty = my / ts, trx = rx / ts, try_ = ry / ts;
  r.x0 = clamp_to_int(std::floor(tx - trx), 0, P.TW);
  r.x1 = clamp_to_int(std::ceil(tx + trx), 0, P.TW);
  r.y0 = clamp_to_int(std::floor(ty - try_), 0, P.TH);
  r.y1 = clamp_to_int(std::ceil(ty + try_), 0, P.TH);
  return r;
}

// The items (flat Gaussian indices) ordered by key[item], ties kept in their given order: a
// stable least-significant-digit radix sort, 8 bits per pass.
std::vector<int32_t> sort_by_key(const std::vector<uint32_t>& key, std::vector<int32_t> items) {
  std::vector<int32_t> sorted(items.size());
  for (int shift = 0; shift < 32; shift += 8) {
    int64_t start[257] = {};
    for (int32_t g : items) ++start[((key[g] >> shift) & 255) + 1];
    for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
    for (int32_t g : items) sorted[start[(key[g] >> shift) & 255]++] = g;
    items.swap(sorted);
  }
  return items;
}

// Tile lists from each Gaussian's tiles and depth key (serial).
Bins bin_gaussians(const Problem& P, const std::vector<TileRect>& rects, const std::vector<uint32_t>& keys) {
  const int64_t G = P.C * P.N, T = P.tiles();
  auto opts = at::TensorOptions().dtype(at::kInt);
  Bins b{at::empty({T + 1}, opts), at::Tensor(), at::Tensor(), at::empty({G + 1}, opts)};
  int32_t* goff = b.gauss_offsets.data_ptr<int32_t>();
  int32_t* toff = b.tile_offsets.data_ptr<int32_t>();
  std::vector<int64_t> count(T + 1, 0);  // per tile, shifted by one for the prefix sum
  std::vector<int32_t> binned;           // Gaussians with at least one tile, by index
  int64_t n = 0;
  for (int64_t g = 0; g < G; ++g) {
    const TileRect& r = rects[g];
    goff[g] = static_cast<int32_t>(n);
    if (r.count() <= 0) continue;
    binned.push_back(static_cast<int32_t>(g));
    n += r.count();
    TORCH_CHECK(n < INT32_MAX, "rasterize: too many tile intersections");
    const int64_t base = (g / P.N) * P.TH * P.TW;
    for (int y = r.y0; y < r.y1; ++y)
      for (int x = r.x0; x < r.x1; ++x) ++count[base + y * P.TW + x + 1];
  }
  goff[G] = static_cast<int32_t>(n);
  for (int64_t t = 0; t < T; ++t) count[t + 1] += count[t];
  for (int64_t t = 0; t <= T; ++t) toff[t] = static_cast<int32_t>(count[t]);

  // Appending Gaussians in depth order (ties by index) leaves every tile's list sorted.
  b.isect_ids = at::empty({n}, opts);
  b.isect_slots = at::empty({n}, opts);
  int32_t* ids = b.isect_ids.data_ptr<int32_t>();
  int32_t* slots = b.isect_slots.data_ptr<int32_t>();
  for (const int32_t g : sort_by_key(keys, std::move(binned))) {
    const TileRect& r = rects[g];
    const int64_t base = (g / P.N) * P.TH * P.TW;
    int32_t slot = goff[g];
    for (int y = r.y0; y < r.y1; ++y)
      for (int x = r.x0; x < r.x1; ++x) {
        const int64_t at = count[base + y * P.TW + x]++;
        ids[at] = g;
        slots[at] = slot++;
      }
  }
  return b;
}

// ---------------------------------------------------------------- vectors

// Tiles are processed in vectors of kLanes consecutive pixels of a row, one pixel per lane
// (lanes.h). Lane-wise maths equal scalar float maths.

inline vf bc(float v) { return vf{} + v; }
inline vi bci(int32_t v) { return vi{} + v; }
inline vf select(vi mask, vf a, vf b) { return mask ? a : b; }
inline vf vabs(vf x) { return reinterpret_cast<vf>(reinterpret_cast<vi>(x) & 0x7fffffff); }
inline bool any(vi mask) {
#if defined(__AVX__)
  return !_mm256_testz_si256(reinterpret_cast<__m256i>(mask), reinterpret_cast<__m256i>(mask));
#elif defined(__x86_64__)
  return _mm_movemask_epi8(reinterpret_cast<__m128i>(mask)) != 0;
#else
  int32_t r = 0;
  for (int l = 0; l < kLanes; ++l) r |= mask[l];
  return r != 0;
#endif
}
inline float hsum(vf x) {
  float r = 0.f;
  for (int l = 0; l < kLanes; ++l) r += x[l];
  return r;
}
inline vf lane_offsets() {  // 0, 1, ..., kLanes - 1
  vf r;
  for (int l = 0; l < kLanes; ++l) r[l] = static_cast<float>(l);
  return r;
}

inline vf fmadd(vf a, vf b, vf c) {  // a * b + c, fused where the CPU can
#ifdef __FMA__
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

inline vf vfloor(vf x) {
#if defined(__AVX__)
  return _mm256_round_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
  const vf t = __builtin_convertvector(__builtin_convertvector(x, vi), vf);  // truncation
  return t - select(t > x, bc(1.f), bc(0.f));
#endif
}

// exp(-sigma) as Cephes expf: 2^n * p(r) with |r| <= ln(2) / 2, about 1 ulp; -sigma clamped to
// [-87, 88], NaN to -87 (callers reject a NaN sigma anyway).
inline vf vexp_neg(vf sigma) {
  vf x = select(sigma <= 87.f, -sigma, bc(-87.f));
  x = select(x <= 88.f, x, bc(88.f));
  const vf nf = vfloor(x * 1.44269504088896341f + 0.5f);
  const vf r = fmadd(nf, bc(2.12194440e-4f), fmadd(nf, bc(-0.693359375f), x));
  vf p = bc(1.9875691500e-4f);
  for (float coef : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = fmadd(p, r, bc(coef));
  p = fmadd(p, r * r, r + 1.f);
  return p * reinterpret_cast<vf>((__builtin_convertvector(nf, vi) + 127) << 23);
}

// gsplat's per-pixel test for one chunk, in two steps so that chunks can be skipped before the
// exp: sigma = 1/2 d^T conic d with d = mean - pixel centre, then vis = exp(-sigma),
// alpha = min(0.999, opacity * vis), ok = sigma >= 0 and alpha >= 1/255. Forward and backward
// must take identical decisions, so both use these.
struct Column {  // the dx terms of sigma, shared by a column of chunks
  vf dx, a_dx_dx, b_dx;
  Column(const Splat& s, vf px) : dx(s.x - px), a_dx_dx(s.a * dx * dx), b_dx(s.b * dx) {}
};
struct Eval {
  vf sigma, vis, alpha;
  vi ok;
};
inline Eval gauss(const Splat& s, const Column& col, float dy) {
  Eval e;
  e.sigma = 0.5f * (col.a_dx_dx + s.c * dy * dy) + col.b_dx * dy;
  return e;
}
inline vi may_pass(const Splat& s, const Eval& e) { return e.sigma <= s.sigma_cut; }  // ok implies this
inline void shade(const Splat& s, Eval& e) {
  e.vis = vexp_neg(e.sigma);
  const vf raw = s.o * e.vis;
  e.alpha = select(raw < kAlphaMax, raw, bc(kAlphaMax));
  e.ok = (e.sigma >= 0.f) & (e.alpha >= kAlphaMin);
}

// Pixel layout of one (camera, tile): per-pixel values in rows of `row` = chunks * kLanes lanes;
// pixel (x, y) is lane (y - y0) * row + (x - x0). Lanes past the image edge exist but never
// contribute. A Gaussian is evaluated on vectors of kLanes consecutive lanes of a row starting at
// any column (unaligned), so that one as narrow as kLanes pixels needs one vector per row.
struct Tile {
  int64_t cam;
  int x0, x1, y0, y1, row;
  Tile(const Problem& P, int64_t t) : cam(t / (P.TH * P.TW)), row((P.ts + kLanes - 1) / kLanes * kLanes) {
    const int64_t rem = t % (P.TH * P.TW);
    x0 = static_cast<int>(rem % P.TW) * P.ts;
    y0 = static_cast<int>(rem / P.TW) * P.ts;
    x1 = std::min(P.W, x0 + P.ts);
    y1 = std::min(P.H, y0 + P.ts);
  }
  int lanes() const { return (y1 - y0) * row; }
  int pixels() const { return (x1 - x0) * (y1 - y0); }
  int lane_index(int x, int y) const { return (y - y0) * row + (x - x0); }
  int64_t global(const Problem& P, int x, int y) const { return (cam * P.H + y) * P.W + x; }  // [C, H, W]
  vf px(int column) const { return lane_offsets() + static_cast<float>(x0 + column) + 0.5f; }  // pixel centres
};

// Rows [y_lo, y_hi) of a tile that a splat may touch (1 px margin), and the vectors covering its
// columns: `chunks` of them, contiguous, from tile column x_off.
struct Box {
  int y_lo, y_hi, x_off, chunks;
  Box(const Splat& s, const Tile& tile) : y_lo(tile.y0), y_hi(tile.y1), x_off(0), chunks(tile.row / kLanes) {
    if (s.kind == Splat::kInvisible) y_hi = y_lo;
    if (s.kind != Splat::kEllipse) return;
    y_lo = clamp_to_int(std::floor(s.y - 0.5f - s.y_ext), tile.y0, tile.y1);
    y_hi = clamp_to_int(std::ceil(s.y - 0.5f + s.y_ext) + 1.f, tile.y0, tile.y1);
    const int x_lo = clamp_to_int(std::floor(s.x - 0.5f - s.x_ext), tile.x0, tile.x1);
    const int x_hi = clamp_to_int(std::ceil(s.x - 0.5f + s.x_ext) + 1.f, tile.x0, tile.x1);
    chunks = (std::max(x_hi - x_lo, 0) + kLanes - 1) / kLanes;
    x_off = std::min(x_lo - tile.x0, tile.row - chunks * kLanes);  // stays inside the row
  }
};

// kLanes values at any lane (unaligned).
inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vi load(const int32_t* p) {
  vi v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void store(int32_t* p, vi v) { std::memcpy(p, &v, sizeof v); }

// ---------------------------------------------------------------- forward

struct ForwardOut {
  float* colors;   // [C, H, W, D]
  float* alphas;   // [C, H, W]
  float* T_final;  // [C, H, W] transmittance after the last contributing Gaussian
  int32_t* last;   // [C, H, W] list position of the last contributing Gaussian, -1 if none
};

// DC: channel count at compile time, 0 = P.D at run time.
template <int DC>
void forward_tile(const Problem& P, int64_t t, const ForwardOut& out) {
  const int64_t D = DC ? DC : P.D;
  const Tile tile(P, t);
  const int n = tile.lanes();
  // Per pixel: transmittance, accumulated colour (channel-major), last contributor, done mask
  // (-1: stopped, or past the image edge).
  std::vector<float> T(n, 1.f), acc(D * n, 0.f);
  std::vector<int32_t> last(n, -1), done(n, 0);
  for (int l = 0; l < n; ++l) done[l] = tile.x0 + l % tile.row >= tile.x1 ? -1 : 0;
  int n_todo = tile.pixels();

  const int32_t begin = P.tile_offsets[t], end = P.tile_offsets[t + 1];
  for (int32_t i = begin; i < end && n_todo > 0; ++i) {
    if (i + kPrefetch < end) __builtin_prefetch(&P.splats[P.isect_ids[i + kPrefetch]]);
    const int64_t g = P.isect_ids[i];
    const Splat& s = P.splats[g];
    const float* col = P.colors + g * D;
    const Box box(s, tile);
    vi stopped = bci(0);
    for (int j = 0; j < box.chunks; ++j) {
      const int column_off = box.x_off + j * kLanes;
      const Column column(s, tile.px(column_off));
      for (int y = box.y_lo; y < box.y_hi; ++y) {
        const float dy = s.y - (y + 0.5f);
        const int l = (y - tile.y0) * tile.row + column_off;
        Eval e = gauss(s, column, dy);
        const vi done_l = load(&done[l]);
        const vi live = ~done_l & may_pass(s, e);
        if (!any(live)) continue;
        shade(s, e);
        const vi ok = e.ok & live;
        const vf T_l = load(&T[l]);
        const vf next_T = T_l * (1.f - e.alpha);
        const vi stop = ok & (next_T <= kTransmittanceMin);  // exclusive: not added
        const vi add = ok & ~stop;
        const vf w = select(add, e.alpha * T_l, bc(0.f));
        for (int64_t k = 0; k < D; ++k) store(&acc[k * n + l], load(&acc[k * n + l]) + col[k] * w);
        store(&T[l], select(add, next_T, T_l));
        store(&last[l], add ? bci(i) : load(&last[l]));
        store(&done[l], done_l | stop);
        stopped += stop;
      }
    }
    for (int l = 0; l < kLanes; ++l) n_todo += stopped[l];
  }

  const float* bg = P.backgrounds ? P.backgrounds + tile.cam * D : nullptr;
  for (int y = tile.y0; y < tile.y1; ++y) {
    for (int x = tile.x0; x < tile.x1; ++x) {
      const int l = tile.lane_index(x, y);
      const int64_t q = tile.global(P, x, y);
      for (int64_t k = 0; k < D; ++k) out.colors[q * D + k] = acc[k * n + l] + (bg ? T[l] * bg[k] : 0.f);
      out.alphas[q] = 1.f - T[l];
      out.T_final[q] = T[l];
      out.last[q] = last[l];
    }
  }
}

// ---------------------------------------------------------------- backward

// A [C, H, W, D] image gradient with any strides (autograd often hands over expanded ones).
struct ImageGrad {
  const float* data;
  int64_t stride[4];
  explicit ImageGrad(const at::Tensor& x) : data(x.data_ptr<float>()) {
    TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "rasterize: image gradients must be float32 [C, H, W, D]");
    for (int d = 0; d < 4; ++d) stride[d] = x.stride(d);
  }
  float at(int64_t c, int y, int x, int64_t k) const {
    return data[c * stride[0] + y * stride[1] + x * stride[2] + k * stride[3]];
  }
};

struct BackwardIn {
  const float* T_final;  // [C, H, W]
  const int32_t* last;   // [C, H, W]
  ImageGrad v_colors;    // [C, H, W, D]
  ImageGrad v_alphas;    // [C, H, W, 1]
  const int32_t* slots;  // [n_isects]
  float* grads;          // [n_isects, K] gradient slots, each written once
  int64_t K;
  bool absgrad;
};

template <int DC>
void backward_tile(const Problem& P, int64_t t, const BackwardIn& in) {
  const int64_t D = DC ? DC : P.D;
  const Tile tile(P, t);
  const int n = tile.lanes();
  const float* bg = P.backgrounds ? P.backgrounds + tile.cam * D : nullptr;
  // Per pixel: running transmittance (recovered back to front), last list position, dL/dcolour
  // and the colour of what lies behind (channel-major), and T_final dL/d(1 - T_final) net of the
  // background term.
  std::vector<float> T(n, 1.f), v_T_final(n, 0.f), v_col(D * n, 0.f), behind(D * n, 0.f);
  std::vector<int32_t> last(n, -1);
  int32_t last_max = -1;
  for (int y = tile.y0; y < tile.y1; ++y) {
    for (int x = tile.x0; x < tile.x1; ++x) {
      const int l = tile.lane_index(x, y);
      const int64_t q = tile.global(P, x, y);
      T[l] = in.T_final[q];
      last[l] = in.last[q];
      last_max = std::max(last_max, in.last[q]);
      float bg_dot = 0.f;
      for (int64_t k = 0; k < D; ++k) {
        v_col[k * n + l] = in.v_colors.at(tile.cam, y, x, k);
        if (bg) bg_dot += bg[k] * v_col[k * n + l];
      }
      v_T_final[l] = in.T_final[q] * (in.v_alphas.at(tile.cam, y, x, 0) - bg_dot);
    }
  }

  // Vector accumulators of one Gaussian's gradient, laid out as its slot (registers for fixed D).
  const int64_t K = in.K;
  vf fixed[DC ? kSlotColor + DC + 2 : 1];
  std::vector<vf> dynamic(DC ? 0 : K);
  vf* grad = DC ? fixed : dynamic.data();

  const int32_t begin = P.tile_offsets[t];
  for (int32_t i = last_max; i >= begin; --i) {
    if (i - kPrefetch >= begin) __builtin_prefetch(&P.splats[P.isect_ids[i - kPrefetch]]);
    const int64_t g = P.isect_ids[i];
    const Splat& s = P.splats[g];
    const float* col = P.colors + g * D;
    const Box box(s, tile);
    std::fill(grad, grad + K, bc(0.f));
    bool touched = false;
    for (int j = 0; j < box.chunks; ++j) {
      const int column_off = box.x_off + j * kLanes;
      const Column column(s, tile.px(column_off));
      // sigma's gradient, summed over the column's rows as v_sigma, v_sigma dy and v_sigma dy^2:
      // with dx fixed, the mean and conic gradients are linear in these sums.
      vf v_sigma_sum = bc(0.f), v_sigma_dy = bc(0.f), v_sigma_dy2 = bc(0.f);
      for (int y = box.y_lo; y < box.y_hi; ++y) {
        const float dy = s.y - (y + 0.5f);
        const int l = (y - tile.y0) * tile.row + column_off;
        Eval e = gauss(s, column, dy);
        const vi listed = (bci(i) <= load(&last[l])) & may_pass(s, e);  // as the forward's live lanes
        if (!any(listed)) continue;
        shade(s, e);
        const vi valid = e.ok & listed;
        if (!any(valid)) continue;
        touched = true;
        const vf ra = 1.f / (1.f - e.alpha);
        const vf T_behind = load(&T[l]);
        const vf T_l = select(valid, T_behind * ra, T_behind);  // transmittance in front of this Gaussian
        store(&T[l], T_l);
        const vf w = select(valid, e.alpha * T_l, bc(0.f));
        vf v_alpha = ra * load(&v_T_final[l]);
        for (int64_t k = 0; k < D; ++k) {
          const vf vc = load(&v_col[k * n + l]), b = load(&behind[k * n + l]);
          grad[kSlotColor + k] += w * vc;
          v_alpha += (col[k] * T_l - b * ra) * vc;
          store(&behind[k * n + l], b + col[k] * w);
        }
        const vi unclamped = valid & (s.o * e.vis <= kAlphaMax);  // no gradient through the clamp
        const vf v_opacity = select(unclamped, e.vis * v_alpha, bc(0.f));
        const vf v_sigma = -s.o * v_opacity;
        grad[kSlotOpacity] += v_opacity;
        v_sigma_sum += v_sigma;
        v_sigma_dy += v_sigma * dy;
        v_sigma_dy2 += v_sigma * (dy * dy);
        if (in.absgrad) {
          grad[kSlotColor + D] += vabs(v_sigma * (s.a * column.dx + s.b * dy));
          grad[kSlotColor + D + 1] += vabs(v_sigma * (s.b * column.dx + s.c * dy));
        }
      }
      const vf dx = column.dx;
      grad[kSlotMean] += s.a * dx * v_sigma_sum + s.b * v_sigma_dy;
      grad[kSlotMean + 1] += s.b * dx * v_sigma_sum + s.c * v_sigma_dy;
      grad[kSlotConic] += 0.5f * dx * dx * v_sigma_sum;
      grad[kSlotConic + 1] += dx * v_sigma_dy;
      grad[kSlotConic + 2] += 0.5f * v_sigma_dy2;
    }
    float* slot = in.grads + in.slots[i] * K;  // this (Gaussian, tile)'s own slot
    for (int64_t k = 0; k < K; ++k) slot[k] = touched ? hsum(grad[k]) : 0.f;
  }
  for (int32_t i = std::max(last_max + 1, begin); i < P.tile_offsets[t + 1]; ++i)  // behind every pixel's last
    std::fill(in.grads + in.slots[i] * K, in.grads + (in.slots[i] + 1) * K, 0.f);
}

template <template <int> class Kernel, typename... Args>
void dispatch_channels(int64_t D, Args&&... args) {
  switch (D) {
    case 1: return Kernel<1>::run(args...);
    case 2: return Kernel<2>::run(args...);
    case 3: return Kernel<3>::run(args...);
    case 4: return Kernel<4>::run(args...);
    default: return Kernel<0>::run(args...);
  }
}

// One OpenMP region on torch's thread count: prepare every Gaussian, bin (one thread), then the
// (camera, tile) pairs, dynamically scheduled. Sets P's tile lists.
template <int DC>
struct Forward {
  static void run(Problem& P, const int32_t* radii, const float* depths, Bins& bins, const ForwardOut& out) {
    const int64_t G = P.C * P.N;
    std::vector<TileRect> rects(G);
    std::vector<uint32_t> keys(G);
    std::exception_ptr error;
#pragma omp parallel num_threads(at::get_num_threads())
    {
#pragma omp for schedule(static)
      for (int64_t g = 0; g < G; ++g) {
        P.splats[g] = prepare(P.means2d + 2 * g, P.conics + 3 * g, P.opacities[g]);
        rects[g] = tile_rect(P, radii, g);
        keys[g] = depth_key(depths[g]);
      }
#pragma omp single
      try {
        bins = bin_gaussians(P, rects, keys);
        P.tile_offsets = bins.tile_offsets.data_ptr<int32_t>();
        P.isect_ids = bins.isect_ids.data_ptr<int32_t>();
      } catch (...) {
        error = std::current_exception();
      }
      const int64_t tiles = error ? 0 : P.tiles();
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < tiles; ++t) forward_tile<DC>(P, t, out);
    }
    if (error) std::rethrow_exception(error);
  }
};

// Where the backward sums a Gaussian's slots: out[g * count + k] = sum of slot entry first + k.
struct GradientPart {
  float* out;
  int64_t first, count;
};

// One OpenMP region: the (camera, tile) pairs, then each Gaussian's slot sums.
template <int DC>
struct Backward {
  static void run(const Problem& P, const BackwardIn& in, const int32_t* gauss_offsets,
                  const std::vector<GradientPart>& parts) {
    const int64_t K = in.K;
#pragma omp parallel num_threads(at::get_num_threads())
    {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < P.tiles(); ++t) backward_tile<DC>(P, t, in);
      std::vector<float> sum(K);
#pragma omp for schedule(static)
      for (int64_t g = 0; g < P.C * P.N; ++g) {  // slots of g are contiguous, in tile order
        std::fill(sum.begin(), sum.end(), 0.f);
        for (int32_t j = gauss_offsets[g]; j < gauss_offsets[g + 1]; ++j)
          for (int64_t k = 0; k < K; ++k) sum[k] += in.grads[j * K + k];
        for (const GradientPart& part : parts) std::copy_n(sum.begin() + part.first, part.count, part.out + g * part.count);
      }
    }
  }
};

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors,
                  const at::Tensor& opacities, const c10::optional<at::Tensor>& backgrounds) {
  for (const at::Tensor* x : {&means2d, &conics, &colors, &opacities}) {
    TORCH_CHECK(x->is_contiguous() && x->scalar_type() == at::kFloat && x->device().is_cpu(),
                "rasterize: inputs must be contiguous float32 CPU tensors");
  }
  if (backgrounds) TORCH_CHECK(backgrounds->is_contiguous() && backgrounds->scalar_type() == at::kFloat);
}

}  // namespace

// Returns render_colors [C, H, W, D], render_alphas [C, H, W, 1], and what the backward needs:
// T_final [C, H, W], last_ids [C, H, W], tile_offsets, isect_ids, isect_slots, gauss_offsets and
// the prepared splats (bytes).
std::vector<at::Tensor> rasterize_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& colors, const at::Tensor& opacities,
                                          const at::Tensor& depths, const at::Tensor& radii,
                                          const c10::optional<at::Tensor>& backgrounds, int64_t width,
                                          int64_t height, int64_t tile_size) {
  check_inputs(means2d, conics, colors, opacities, backgrounds);
  TORCH_CHECK(radii.is_contiguous() && radii.scalar_type() == at::kInt && radii.size(-1) == 2);
  TORCH_CHECK(depths.is_contiguous() && depths.scalar_type() == at::kFloat);
  TORCH_CHECK(radii.numel() == 2 * means2d.size(0) * means2d.size(1) && depths.numel() == radii.numel() / 2);
  const int64_t G = means2d.size(0) * means2d.size(1);
  at::Tensor splat_bytes = at::empty({G * static_cast<int64_t>(sizeof(Splat))}, means2d.options().dtype(at::kByte));
  Problem P(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, splat_bytes);

  auto f32 = means2d.options();
  at::Tensor render_colors = at::empty({P.C, height, width, P.D}, f32);
  at::Tensor render_alphas = at::empty({P.C, height, width, 1}, f32);
  at::Tensor T_final = at::empty({P.C, height, width}, f32);
  at::Tensor last_ids = at::empty({P.C, height, width}, f32.dtype(at::kInt));
  const ForwardOut out{render_colors.data_ptr<float>(), render_alphas.data_ptr<float>(), T_final.data_ptr<float>(),
                       last_ids.data_ptr<int32_t>()};
  Bins bins;
  dispatch_channels<Forward>(P.D, P, radii.data_ptr<int32_t>(), depths.data_ptr<float>(), bins, out);
  return {render_colors, render_alphas, T_final, last_ids, bins.tile_offsets,
          bins.isect_ids, bins.isect_slots, bins.gauss_offsets, splat_bytes};
}

// Returns v_means2d [C, N, 2], v_conics [C, N, 3], v_colors [C, N, D], v_opacities [C, N] and,
// with absgrad, the per-pixel sum of |d/dmeans2d| [C, N, 2] (else an empty tensor).
std::vector<at::Tensor> rasterize_backward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& colors, const at::Tensor& opacities,
    const c10::optional<at::Tensor>& backgrounds, int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& T_final, const at::Tensor& last_ids, const at::Tensor& tile_offsets,
    const at::Tensor& isect_ids, const at::Tensor& isect_slots, const at::Tensor& gauss_offsets,
    const at::Tensor& splat_bytes, const at::Tensor& v_render_colors, const at::Tensor& v_render_alphas,
    bool absgrad) {
  check_inputs(means2d, conics, colors, opacities, backgrounds);
  Problem P(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, splat_bytes);
  P.tile_offsets = tile_offsets.data_ptr<int32_t>();
  P.isect_ids = isect_ids.data_ptr<int32_t>();

  const int64_t K = kSlotColor + P.D + (absgrad ? 2 : 0);
  at::Tensor grads = at::empty({isect_ids.size(0), K}, means2d.options());
  const BackwardIn in{T_final.data_ptr<float>(), last_ids.data_ptr<int32_t>(), ImageGrad(v_render_colors),
                      ImageGrad(v_render_alphas), isect_slots.data_ptr<int32_t>(), grads.data_ptr<float>(),
                      K, absgrad};
  // Each Gaussian's slots are summed straight into the outputs.
  const auto f32 = means2d.options();
  at::Tensor v_means2d = at::empty({P.C, P.N, 2}, f32), v_conics = at::empty({P.C, P.N, 3}, f32);
  at::Tensor v_colors = at::empty({P.C, P.N, P.D}, f32), v_opacities = at::empty({P.C, P.N}, f32);
  at::Tensor v_abs = absgrad ? at::empty({P.C, P.N, 2}, f32) : at::Tensor();
  std::vector<GradientPart> parts{{v_means2d.data_ptr<float>(), kSlotMean, 2},
                                  {v_conics.data_ptr<float>(), kSlotConic, 3},
                                  {v_opacities.data_ptr<float>(), kSlotOpacity, 1},
                                  {v_colors.data_ptr<float>(), kSlotColor, P.D}};
  if (absgrad) parts.push_back({v_abs.data_ptr<float>(), kSlotColor + P.D, 2});
  dispatch_channels<Backward>(P.D, P, in, gauss_offsets.data_ptr<int32_t>(), parts);
  return {v_means2d, v_conics, v_colors, v_opacities, v_abs};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rasterize_forward, "Gaussian rasterization to pixels, forward (CPU)");
  m.def("backward", &rasterize_backward, "Gaussian rasterization to pixels, backward (CPU)");
}
