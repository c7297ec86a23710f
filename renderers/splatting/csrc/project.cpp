// Per-Gaussian stages of CPU Gaussian splatting with hand-written backwards:
//   * EWA projection of N Gaussians into C pinhole cameras (gsplat 1.5.3 fused projection),
//   * real spherical-harmonics colours of degree 0-3 (gsplat's sh_coeffs_to_color).
// Both follow `_torch_impl.project_gaussians` / `spherical_harmonics` operation by operation in
// float32 (built with -ffp-contract=off, like the torch reference); the projection runs on groups
// of 8 (AVX) or 4 Gaussians at once, one per vector lane. Work is split over Gaussians;
// each Gaussian owns its gradient slots and sums over cameras itself, so results do not depend on
// the thread count. As in gsplat's backward, culled (camera, Gaussian) pairs get no gradient.
#include <torch/extension.h>

#include "lanes.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <type_traits>

namespace {

constexpr float kAlphaMin = 1.f / 255.f;  // gsplat ALPHA_THRESHOLD
constexpr float kNormEps = 1e-12f;        // F.normalize's eps
constexpr float kCompensationMin = 1e-12f;


// ---------------------------------------------------------------------------------------------
// Projection

struct Camera {
  float R[3][3], t[3];
  float fx, fy, cx, cy;
  float lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg;  // clamp of x/z, y/z in the Jacobian
};

struct Settings {
  int64_t C, N;
  int width, height;
  float eps2d, near_plane, far_plane, radius_clip;
  bool calc_compensations;
};

std::vector<Camera> make_cameras(const at::Tensor& viewmats, const at::Tensor& Ks, int width, int height) {
  const auto V = viewmats.accessor<float, 3>();
  const auto K = Ks.accessor<float, 3>();
  std::vector<Camera> cams(viewmats.size(0));
  for (size_t c = 0; c < cams.size(); ++c) {
    Camera& cam = cams[c];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.R[i][j] = V[c][i][j];
      cam.t[i] = V[c][i][3];
    }
    cam.fx = K[c][0][0], cam.fy = K[c][1][1], cam.cx = K[c][0][2], cam.cy = K[c][1][2];
    const float tan_fovx = 0.5f * width / cam.fx, tan_fovy = 0.5f * height / cam.fy;
    cam.lim_x_pos = (width - cam.cx) / cam.fx + 0.3f * tan_fovx;
    cam.lim_x_neg = cam.cx / cam.fx + 0.3f * tan_fovx;
    cam.lim_y_pos = (height - cam.cy) / cam.fy + 0.3f * tan_fovy;
    cam.lim_y_neg = cam.cy / cam.fy + 0.3f * tan_fovy;
  }
  return cams;
}

// ---------------------------------------------------------------------------------------------
// Lanes: the projection maths is written once for F = float (one Gaussian) and F = vf (kLanes
// Gaussians, lanes.h); lane-wise it is the same float maths. Masks are bool or vi.

template <typename F>
struct LaneTypes {
  using Mask = bool;
  using Int = int32_t;
  static constexpr int width = 1;
};
template <>
struct LaneTypes<vf> {
  using Mask = vi;
  using Int = vi;
  static constexpr int width = kLanes;
};
template <typename F>
using Mask = typename LaneTypes<F>::Mask;

template <typename F>
F splat(float x) {
  return F{} + x;
}
inline float lane(float x, int) { return x; }
inline float lane(vf x, int l) { return x[l]; }
inline int32_t lane(int32_t x, int) { return x; }
inline int32_t lane(vi x, int l) { return x[l]; }
template <typename F, typename Fn>
F per_lane(F x, Fn fn) {  // fn applied lane by lane
  if constexpr (LaneTypes<F>::width == 1) {
    return fn(x);
  } else {
    F r;
    for (int l = 0; l < kLanes; ++l) r[l] = fn(x[l]);
    return r;
  }
}
template <typename F>
F lsqrt(F x) {
#ifdef __AVX__
  if constexpr (LaneTypes<F>::width == 8) return _mm256_sqrt_ps(x);
#endif
  return per_lane(x, [](float v) { return std::sqrt(v); });
}
template <typename F>
F lmax(F a, F b) {  // std::max
  return a < b ? b : a;
}
template <typename F>
F lmin(F a, F b) {  // std::min
  return b < a ? b : a;
}
template <typename F>
typename LaneTypes<F>::Int to_int(F x) {  // static_cast<int32_t>
  if constexpr (LaneTypes<F>::width == 1) {
    return static_cast<int32_t>(x);
  } else {
    return __builtin_convertvector(x, vi);
  }
}
// Lanes [n, n + lanes of V) of column k of a row-major [*, stride] array of T, as V (T, or a
// vector of T), and back.
template <typename V, typename T>
V load(const T* x, int64_t n, int64_t stride, int64_t k) {
  if constexpr (std::is_same_v<V, T>) {
    return x[n * stride + k];
  } else {
    V r;
    for (int l = 0; l < kLanes; ++l) r[l] = x[(n + l) * stride + k];
    return r;
  }
}
template <typename T, typename V>
void store(T* x, int64_t n, int64_t stride, int64_t k, V v) {
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(T)); ++l) x[(n + l) * stride + k] = lane(v, l);
}

inline bool any_lane(bool m) { return m; }
inline bool any_lane(vi m) {
  for (int l = 0; l < kLanes; ++l)
    if (m[l]) return true;
  return false;
}

// Runs block(vf{}, n) on each full group of kLanes Gaussians from n and block(0.f, n) on each of
// the rest, in parallel.
template <typename Block>
void for_each_block(int64_t N, const Block& block) {
  const int64_t groups = N / kLanes;
  at::parallel_for(0, groups + 1, 128, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (i < groups) {
        block(vf{}, i * kLanes);
      } else {
        for (int64_t n = groups * kLanes; n < N; ++n) block(0.f, n);
      }
    }
  });
}

// World-space covariance Sigma = M M^T with M = R(q / |q|) diag(s).
template <typename F>
struct WorldCovariance {
  F q[4], norm;  // normalised quaternion (wxyz) and the norm it was divided by (>= eps)
  F R[3][3], M[3][3], Sigma[3][3];
};

template <typename F>
void world_covariance(const F* quat, const F* scale, WorldCovariance<F>& w) {
  const F n = lsqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  w.norm = lmax(n, splat<F>(kNormEps));
  for (int i = 0; i < 4; ++i) w.q[i] = quat[i] / w.norm;
  const F qw = w.q[0], x = w.q[1], y = w.q[2], z = w.q[3];
  const F R[3][3] = {{1 - 2 * (y * y + z * z), 2 * (x * y - qw * z), 2 * (x * z + qw * y)},
                     {2 * (x * y + qw * z), 1 - 2 * (x * x + z * z), 2 * (y * z - qw * x)},
                     {2 * (x * z - qw * y), 2 * (y * z + qw * x), 1 - 2 * (x * x + y * y)}};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) w.R[i][j] = R[i][j], w.M[i][j] = R[i][j] * scale[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      w.Sigma[i][j] = w.M[i][0] * w.M[j][0] + w.M[i][1] * w.M[j][1] + w.M[i][2] * w.M[j][2];
}

// One Gaussian seen by one camera: the outputs and the intermediates the backward needs.
template <typename F>
struct Projection {
  F p[3];                           // camera-space mean (p[2] is the output depth)
  F z;                              // p[2] when within [near, far], else 1 (keeps culled entries finite)
  Mask<F> in_range, valid, clamp_x, clamp_y;  // valid: in range and det > 0; clamp_*: x/z or y/z clamped
  F u, v;                           // clamped x/z, y/z
  F J[2][3];
  F Sigma_c[3][3];                  // camera-space covariance
  F a, b, c, det, det_orig;         // blurred 2D covariance (a b; b c), its determinant, unblurred det
  F mean2d[2], conic[3], compensation;
  typename LaneTypes<F>::Int radius[2];
};

// Everything but the radii.
template <typename F>
void project(const Camera& cam, const Settings& s, const F* mean, const WorldCovariance<F>& w, Projection<F>& P) {
  for (int i = 0; i < 3; ++i) P.p[i] = cam.R[i][0] * mean[0] + cam.R[i][1] * mean[1] + cam.R[i][2] * mean[2] + cam.t[i];
  // Sigma_c = R_cam Sigma R_cam^T
  F RS[3][3];
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k)
      RS[i][k] = cam.R[i][0] * w.Sigma[0][k] + cam.R[i][1] * w.Sigma[1][k] + cam.R[i][2] * w.Sigma[2][k];
  for (int i = 0; i < 3; ++i)
    for (int l = 0; l < 3; ++l) P.Sigma_c[i][l] = RS[i][0] * cam.R[l][0] + RS[i][1] * cam.R[l][1] + RS[i][2] * cam.R[l][2];

  const F x = P.p[0], y = P.p[1], depth = P.p[2];
  P.in_range = (depth >= s.near_plane) & (depth <= s.far_plane);
  const F z = P.z = P.in_range ? depth : splat<F>(1.f);
  // torch.clamp: the gradient passes where lo <= v <= hi
  const F u = x / z, v = y / z;
  P.clamp_x = !((u >= -cam.lim_x_neg) & (u <= cam.lim_x_pos));
  P.clamp_y = !((v >= -cam.lim_y_neg) & (v <= cam.lim_y_pos));
  P.u = lmin(lmax(u, splat<F>(-cam.lim_x_neg)), splat<F>(cam.lim_x_pos));
  P.v = lmin(lmax(v, splat<F>(-cam.lim_y_neg)), splat<F>(cam.lim_y_pos));
  const F tx = z * P.u, ty = z * P.v, z2 = z * z;
  P.J[0][0] = cam.fx / z, P.J[0][1] = splat<F>(0.f), P.J[0][2] = -cam.fx * tx / z2;
  P.J[1][0] = splat<F>(0.f), P.J[1][1] = cam.fy / z, P.J[1][2] = -cam.fy * ty / z2;

  F JS[2][3];  // J Sigma_c
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 3; ++k)
      JS[i][k] = P.J[i][0] * P.Sigma_c[0][k] + P.J[i][1] * P.Sigma_c[1][k] + P.J[i][2] * P.Sigma_c[2][k];
  F cov[2][2];
  for (int i = 0; i < 2; ++i)
    for (int l = 0; l < 2; ++l) cov[i][l] = JS[i][0] * P.J[l][0] + JS[i][1] * P.J[l][1] + JS[i][2] * P.J[l][2];
  P.mean2d[0] = cam.fx * x / z + cam.cx;
  P.mean2d[1] = cam.fy * y / z + cam.cy;

  P.det_orig = cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0];
  P.a = cov[0][0] + s.eps2d, P.b = cov[1][0], P.c = cov[1][1] + s.eps2d;
  const F det = P.a * P.c - cov[0][1] * P.b;
  P.valid = P.in_range & (det > 0.f);
  P.det = P.valid ? det : splat<F>(1.f);
  P.conic[0] = P.c / P.det, P.conic[1] = -P.b / P.det, P.conic[2] = P.a / P.det;
  P.compensation = lsqrt(lmax(P.det_orig / P.det, splat<F>(kCompensationMin)));
}

// Per-axis radii with the opacity-aware extent; 0 when culled.
template <typename F>
void compute_radii(const Settings& s, F opacity, bool has_opacity, Projection<F>& P) {
  Mask<F> valid = P.valid;
  F extend = splat<F>(3.33f);
  if (has_opacity) {  // opacity-aware box: exactly where alpha can reach 1/255
    const F o = s.calc_compensations ? opacity * P.compensation : opacity;
    valid = valid & (o >= kAlphaMin);
    extend = lmin(extend, lsqrt(2.f * per_lane(lmax(o / kAlphaMin, splat<F>(1.f)), [](float v) { return std::log(v); })));
  }
  const F rx = per_lane(extend * lsqrt(P.a), [](float v) { return std::ceil(v); });
  const F ry = per_lane(extend * lsqrt(P.c), [](float v) { return std::ceil(v); });
  const Mask<F> on_screen = (P.mean2d[0] + rx > 0.f) & (P.mean2d[0] - rx < static_cast<float>(s.width)) & (P.mean2d[1] + ry > 0.f) &
                            (P.mean2d[1] - ry < static_cast<float>(s.height));
  const Mask<F> visible = valid & ((rx > s.radius_clip) | (ry > s.radius_clip)) & on_screen;
  constexpr float kMaxRadius = 1 << 30;
  const typename LaneTypes<F>::Int zero{};
  P.radius[0] = visible ? to_int(lmin(rx, splat<F>(kMaxRadius))) : zero;
  P.radius[1] = visible ? to_int(lmin(ry, splat<F>(kMaxRadius))) : zero;
}

// Adds to v_mean (world) and v_Sigma (world covariance) the gradient of one projection, given the
// gradients of its means2d, depth, conic and compensation; lanes where `use` is false add nothing.
template <typename F>
void project_vjp(const Camera& cam, const Settings& s, const Projection<F>& P, Mask<F> use, const F* v_mean2d,
                 F v_depth, const F* v_conic, F v_compensation, F* v_mean, F (*v_Sigma)[3]) {
  const F a = P.a, b = P.b, c = P.c, det = P.det;
  // conic = (c, -b, a) / det
  const F v_det = -(v_conic[0] * c - v_conic[1] * b + v_conic[2] * a) / (det * det);
  F v_a = v_conic[2] / det + v_det * c;
  F v_c = v_conic[0] / det + v_det * a;
  F v_b = -v_conic[1] / det - 2.f * b * v_det;  // b enters twice: as cov[0][1] and cov[1][0]
  const F ratio = P.det_orig / det;
  if (s.calc_compensations) {  // compensation = sqrt(det_orig / det), clamped below
    const Mask<F> passes = ratio >= kCompensationMin;
    const F v_ratio = v_compensation * 0.5f / P.compensation;
    v_a = passes ? v_a + v_ratio * ((c - s.eps2d) - ratio * c) / det : v_a;
    v_c = passes ? v_c + v_ratio * ((a - s.eps2d) - ratio * a) / det : v_c;
    v_b = passes ? v_b + v_ratio * (-2.f * b + ratio * 2.f * b) / det : v_b;
  }
  const F V[2][2] = {{v_a, 0.5f * v_b}, {0.5f * v_b, v_c}};  // symmetric d/d(2D covariance)

  // cov = J Sigma_c J^T: v_J = 2 V J Sigma_c, v_Sigma_c = J^T V J
  F VJ[2][3];
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 3; ++k) VJ[i][k] = V[i][0] * P.J[0][k] + V[i][1] * P.J[1][k];
  F v_J[2][3];
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 3; ++k)
      v_J[i][k] = 2.f * (VJ[i][0] * P.Sigma_c[0][k] + VJ[i][1] * P.Sigma_c[1][k] + VJ[i][2] * P.Sigma_c[2][k]);
  F v_Sigma_c[3][3];
  for (int k = 0; k < 3; ++k)
    for (int l = 0; l < 3; ++l) v_Sigma_c[k][l] = P.J[0][k] * VJ[0][l] + P.J[1][k] * VJ[1][l];
  // Sigma_c = R_cam Sigma R_cam^T: v_Sigma += R_cam^T v_Sigma_c R_cam
  F RtV[3][3];
  for (int i = 0; i < 3; ++i)
    for (int l = 0; l < 3; ++l)
      RtV[i][l] = cam.R[0][i] * v_Sigma_c[0][l] + cam.R[1][i] * v_Sigma_c[1][l] + cam.R[2][i] * v_Sigma_c[2][l];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const F add = RtV[i][0] * cam.R[0][j] + RtV[i][1] * cam.R[1][j] + RtV[i][2] * cam.R[2][j];
      v_Sigma[i][j] = use ? v_Sigma[i][j] + add : v_Sigma[i][j];
    }

  // J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]] with tx = z u, ty = z v
  const F z = P.z, x = P.p[0], y = P.p[1], z2 = z * z, z3 = z2 * z;
  const F tx = z * P.u, ty = z * P.v;
  F v_z = -cam.fx / z2 * v_J[0][0] + 2.f * cam.fx * tx / z3 * v_J[0][2] - cam.fy / z2 * v_J[1][1] +
          2.f * cam.fy * ty / z3 * v_J[1][2];
  const F v_tx = -cam.fx / z2 * v_J[0][2], v_ty = -cam.fy / z2 * v_J[1][2];
  // tx = z clamp(x / z): d/dx = 1 unclamped; d/dz = u clamped
  F v_x = P.clamp_x ? splat<F>(0.f) : v_tx, v_y = P.clamp_y ? splat<F>(0.f) : v_ty;
  v_z = P.clamp_x ? v_z + v_tx * P.u : v_z;
  v_z = P.clamp_y ? v_z + v_ty * P.v : v_z;
  // means2d = (fx x / z + cx, fy y / z + cy)
  v_x += cam.fx / z * v_mean2d[0];
  v_y += cam.fy / z * v_mean2d[1];
  v_z -= cam.fx * x / z2 * v_mean2d[0] + cam.fy * y / z2 * v_mean2d[1];
  const F v_p[3] = {v_x, v_y, v_z + v_depth};  // visible implies z = depth
  for (int j = 0; j < 3; ++j) {
    const F add = cam.R[0][j] * v_p[0] + cam.R[1][j] * v_p[1] + cam.R[2][j] * v_p[2];
    v_mean[j] = use ? v_mean[j] + add : v_mean[j];
  }
}

// Sigma = M M^T, M = R(q / |q|) diag(s): gradients of the raw quaternion and the scales.
template <typename F>
void world_covariance_vjp(const WorldCovariance<F>& w, const F* scale, F (*v_Sigma)[3], F* v_quat, F* v_scale) {
  F v_M[3][3];  // (v_Sigma + v_Sigma^T) M
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      v_M[i][j] = splat<F>(0.f);
      for (int k = 0; k < 3; ++k) v_M[i][j] += (v_Sigma[i][k] + v_Sigma[k][i]) * w.M[k][j];
    }
  F G[3][3];  // d/dR
  for (int j = 0; j < 3; ++j) {
    v_scale[j] = v_M[0][j] * w.R[0][j] + v_M[1][j] * w.R[1][j] + v_M[2][j] * w.R[2][j];
    for (int i = 0; i < 3; ++i) G[i][j] = v_M[i][j] * scale[j];
  }
  const F qw = w.q[0], x = w.q[1], y = w.q[2], z = w.q[3];
  const F v_q[4] = {
      2.f * (-z * G[0][1] + y * G[0][2] + z * G[1][0] - x * G[1][2] - y * G[2][0] + x * G[2][1]),
      2.f * (y * G[0][1] + z * G[0][2] + y * G[1][0] - 2.f * x * G[1][1] - qw * G[1][2] + z * G[2][0] +
             qw * G[2][1] - 2.f * x * G[2][2]),
      2.f * (-2.f * y * G[0][0] + x * G[0][1] + qw * G[0][2] + x * G[1][0] + z * G[1][2] - qw * G[2][0] +
             z * G[2][1] - 2.f * y * G[2][2]),
      2.f * (-2.f * z * G[0][0] - qw * G[0][1] + x * G[0][2] + qw * G[1][0] - 2.f * z * G[1][1] + y * G[1][2] +
             x * G[2][0] + y * G[2][1]),
  };
  // q / max(|q|, eps): the norm only carries gradient when it exceeds eps
  const F dot = w.norm > kNormEps ? v_q[0] * qw + v_q[1] * x + v_q[2] * y + v_q[3] * z : splat<F>(0.f);
  for (int i = 0; i < 4; ++i) v_quat[i] = (v_q[i] - w.q[i] * dot) / w.norm;
}

void check_float(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat && x.device().is_cpu(), name,
              " must be a contiguous float32 CPU tensor");
}

Settings make_settings(const at::Tensor& means, const at::Tensor& viewmats, int64_t width, int64_t height,
                       double eps2d, double near_plane, double far_plane, double radius_clip,
                       bool calc_compensations) {
  return Settings{viewmats.size(0), means.size(0), static_cast<int>(width), static_cast<int>(height),
                  static_cast<float>(eps2d), static_cast<float>(near_plane), static_cast<float>(far_plane),
                  static_cast<float>(radius_clip), calc_compensations};
}

// ---------------------------------------------------------------------------------------------
// Spherical harmonics (Sloan's real basis, as gsplat)

constexpr float kC0 = 0.2820947917738781f, kC1 = 0.48860251190292f;
constexpr float kC2a = 0.5462742152960395f, kC2b = 1.092548430592079f, kC2c = 0.9461746957575601f,
                kC2d = 0.3153915652525201f;
constexpr float kC3a = 0.5900435899266435f, kC3b = 1.445305721320277f, kC3c = 2.285228997322329f,
                kC3d = 0.4570457994644658f, kC3e = 1.865881662950577f, kC3f = 1.119528997770346f;

// The (degree + 1)^2 basis values at unit direction (x, y, z) and, if d is given, their
// derivatives d[k] = (d/dx, d/dy, d/dz).
void sh_basis(int degree, float x, float y, float z, float* B, float (*d)[3]) {
  B[0] = kC0;
  if (d) std::fill(&d[0][0], &d[0][0] + 3 * (degree + 1) * (degree + 1), 0.f);
  if (degree < 1) return;
  B[1] = -kC1 * y, B[2] = kC1 * z, B[3] = -kC1 * x;
  if (d) d[1][1] = -kC1, d[2][2] = kC1, d[3][0] = -kC1;
  if (degree < 2) return;
  const float z2 = z * z, c1 = x * x - y * y, s1 = 2 * x * y;
  B[4] = kC2a * s1;
  B[5] = -kC2b * z * y;
  B[6] = kC2c * z2 - kC2d;
  B[7] = -kC2b * z * x;
  B[8] = kC2a * c1;
  if (d) {
    d[4][0] = 2 * kC2a * y, d[4][1] = 2 * kC2a * x;
    d[5][1] = -kC2b * z, d[5][2] = -kC2b * y;
    d[6][2] = 2 * kC2c * z;
    d[7][0] = -kC2b * z, d[7][2] = -kC2b * x;
    d[8][0] = 2 * kC2a * x, d[8][1] = -2 * kC2a * y;
  }
  if (degree < 3) return;
  const float c2 = x * c1 - y * s1, s2 = x * s1 + y * c1;  // x^3 - 3xy^2, 3x^2y - y^3
  const float tmp = -kC3c * z2 + kC3d;
  B[9] = -kC3a * s2;
  B[10] = kC3b * z * s1;
  B[11] = tmp * y;
  B[12] = z * (kC3e * z2 - kC3f);
  B[13] = tmp * x;
  B[14] = kC3b * z * c1;
  B[15] = -kC3a * c2;
  if (d) {
    d[9][0] = -3 * kC3a * s1, d[9][1] = -3 * kC3a * c1;
    d[10][0] = 2 * kC3b * z * y, d[10][1] = 2 * kC3b * z * x, d[10][2] = kC3b * s1;
    d[11][1] = tmp, d[11][2] = -2 * kC3c * z * y;
    d[12][2] = 3 * kC3e * z2 - kC3f;
    d[13][0] = tmp, d[13][2] = -2 * kC3c * z * x;
    d[14][0] = 2 * kC3b * z * x, d[14][1] = -2 * kC3b * z * y, d[14][2] = kC3b * c1;
    d[15][0] = -3 * kC3a * c1, d[15][1] = 3 * kC3a * s1;
  }
}

// F.normalize(dir): unit vector and the norm it was divided by.
inline float normalize(const float* dir, float* unit) {
  const float norm = std::max(std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]), kNormEps);
  for (int i = 0; i < 3; ++i) unit[i] = dir[i] / norm;
  return norm;
}

}  // namespace

// Returns radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] and
// compensations [C, N] (computed either way; only meaningful with calc_compensations).
std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                        const at::Tensor& viewmats, const at::Tensor& Ks,
                                        const c10::optional<at::Tensor>& opacities, int64_t width, int64_t height,
                                        double eps2d, double near_plane, double far_plane, double radius_clip,
                                        bool calc_compensations) {
  for (const auto& [x, name] : {std::pair{&means, "means"}, {&quats, "quats"}, {&scales, "scales"},
                                 {&viewmats, "viewmats"}, {&Ks, "Ks"}})
    check_float(*x, name);
  if (opacities) check_float(*opacities, "opacities");
  const Settings s = make_settings(means, viewmats, width, height, eps2d, near_plane, far_plane, radius_clip,
                                   calc_compensations);
  const std::vector<Camera> cams = make_cameras(viewmats, Ks, s.width, s.height);
  const auto f32 = means.options();
  at::Tensor radii = at::empty({s.C, s.N, 2}, f32.dtype(at::kInt));
  at::Tensor means2d = at::empty({s.C, s.N, 2}, f32), depths = at::empty({s.C, s.N}, f32);
  at::Tensor conics = at::empty({s.C, s.N, 3}, f32), compensations = at::empty({s.C, s.N}, f32);
  const float *mean = means.data_ptr<float>(), *quat = quats.data_ptr<float>(), *scale = scales.data_ptr<float>();
  const float* opacity = opacities ? opacities->data_ptr<float>() : nullptr;
  int32_t* r_out = radii.data_ptr<int32_t>();
  float *m_out = means2d.data_ptr<float>(), *d_out = depths.data_ptr<float>();
  float *c_out = conics.data_ptr<float>(), *comp_out = compensations.data_ptr<float>();

  for_each_block(s.N, [&](auto lanes, int64_t n) {  // Gaussians [n, n + lanes)
    using F = decltype(lanes);
    F m[3], q[4], sc[3];
    for (int k = 0; k < 3; ++k) m[k] = load<F>(mean, n, 3, k), sc[k] = load<F>(scale, n, 3, k);
    for (int k = 0; k < 4; ++k) q[k] = load<F>(quat, n, 4, k);
    const F o = opacity ? load<F>(opacity, n, 1, 0) : splat<F>(0.f);
    WorldCovariance<F> w;
    world_covariance(q, sc, w);
    Projection<F> P;
    for (int64_t c = 0; c < s.C; ++c) {
      project(cams[c], s, m, w, P);
      compute_radii(s, o, opacity != nullptr, P);
      const int64_t g = c * s.N + n;
      for (int k = 0; k < 2; ++k) store(r_out, g, 2, k, P.radius[k]), store(m_out, g, 2, k, P.mean2d[k]);
      store(d_out, g, 1, 0, P.p[2]);
      for (int k = 0; k < 3; ++k) store(c_out, g, 3, k, P.conic[k]);
      store(comp_out, g, 1, 0, P.compensation);
    }
  });
  return {radii, means2d, depths, conics, compensations};
}

// Returns v_means [N, 3], v_quats [N, 4], v_scales [N, 3]; (camera, Gaussian) pairs with zero
// radii contribute nothing.
std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                         const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& radii,
                                         int64_t width, int64_t height, double eps2d, double near_plane,
                                         double far_plane, double radius_clip, bool calc_compensations,
                                         const at::Tensor& v_means2d, const at::Tensor& v_depths,
                                         const at::Tensor& v_conics, const at::Tensor& v_compensations) {
  for (const auto& [x, name] : {std::pair{&means, "means"}, {&quats, "quats"}, {&scales, "scales"},
                                 {&viewmats, "viewmats"}, {&Ks, "Ks"}, {&v_means2d, "v_means2d"},
                                 {&v_depths, "v_depths"}, {&v_conics, "v_conics"}, {&v_compensations, "v_compensations"}})
    check_float(*x, name);
  TORCH_CHECK(radii.is_contiguous() && radii.scalar_type() == at::kInt, "radii must be contiguous int32");
  const Settings s = make_settings(means, viewmats, width, height, eps2d, near_plane, far_plane, radius_clip,
                                   calc_compensations);
  const std::vector<Camera> cams = make_cameras(viewmats, Ks, s.width, s.height);
  at::Tensor v_means = at::empty({s.N, 3}, means.options()), v_quats = at::empty({s.N, 4}, means.options());
  at::Tensor v_scales = at::empty({s.N, 3}, means.options());
  const float *mean = means.data_ptr<float>(), *quat = quats.data_ptr<float>(), *scale = scales.data_ptr<float>();
  const int32_t* rad = radii.data_ptr<int32_t>();
  const float *vm2d = v_means2d.data_ptr<float>(), *vd = v_depths.data_ptr<float>();
  const float *vc = v_conics.data_ptr<float>(), *vcomp = v_compensations.data_ptr<float>();
  float *vm_out = v_means.data_ptr<float>(), *vq_out = v_quats.data_ptr<float>(), *vs_out = v_scales.data_ptr<float>();

  for_each_block(s.N, [&](auto lanes, int64_t n) {  // Gaussians [n, n + lanes)
    using F = decltype(lanes);
    F m[3], q[4], sc[3];
    for (int k = 0; k < 3; ++k) m[k] = load<F>(mean, n, 3, k), sc[k] = load<F>(scale, n, 3, k);
    for (int k = 0; k < 4; ++k) q[k] = load<F>(quat, n, 4, k);
    WorldCovariance<F> w;
    world_covariance(q, sc, w);
    const F zero = splat<F>(0.f);
    F v_mean[3] = {zero, zero, zero}, v_Sigma[3][3] = {{zero, zero, zero}, {zero, zero, zero}, {zero, zero, zero}};
    Mask<F> any_visible{};
    Projection<F> P;
    for (int64_t c = 0; c < s.C; ++c) {
      const int64_t g = c * s.N + n;
      using Int = typename LaneTypes<F>::Int;
      const Mask<F> visible = (load<Int>(rad, g, 2, 0) != 0) | (load<Int>(rad, g, 2, 1) != 0);
      if (!any_lane(visible)) continue;
      any_visible = any_visible | visible;
      project(cams[c], s, m, w, P);
      const F v_m2d[2] = {load<F>(vm2d, g, 2, 0), load<F>(vm2d, g, 2, 1)};
      const F v_c[3] = {load<F>(vc, g, 3, 0), load<F>(vc, g, 3, 1), load<F>(vc, g, 3, 2)};
      project_vjp(cams[c], s, P, visible, v_m2d, load<F>(vd, g, 1, 0), v_c, load<F>(vcomp, g, 1, 0), v_mean, v_Sigma);
    }
    F v_q[4], v_s[3];
    world_covariance_vjp(w, sc, v_Sigma, v_q, v_s);
    for (int k = 0; k < 3; ++k) store(vm_out, n, 3, k, v_mean[k]);
    for (int k = 0; k < 4; ++k) store(vq_out, n, 4, k, any_visible ? v_q[k] : zero);
    for (int k = 0; k < 3; ++k) store(vs_out, n, 3, k, any_visible ? v_s[k] : zero);
  });
  return {v_means, v_quats, v_scales};
}

// SH coefficients [M, K, 3] given as blocks [M, K_b, 3] along K (e.g. 3DGS's sh0 and shN), read
// and written in place: coefficient k of row m is at pointer(m, k).
template <typename T>
struct CoefficientBlocks {
  std::vector<T*> data;
  std::vector<int64_t> size;  // K_b
  int64_t K = 0;

  CoefficientBlocks(const std::vector<at::Tensor>& blocks, int64_t M, const char* name) {
    TORCH_CHECK(!blocks.empty(), name, ": no coefficient blocks");
    for (const at::Tensor& b : blocks) {
      check_float(b, name);
      TORCH_CHECK(b.dim() == 3 && b.size(0) == M && b.size(2) == 3, name, ": blocks must be [M, K_b, 3]");
      data.push_back(static_cast<T*>(b.data_ptr<float>()));
      size.push_back(b.size(1));
      K += b.size(1);
    }
  }
  // The first n coefficients of row m.
  void row(int64_t m, int64_t n, T** out) const {
    int64_t k = 0;
    for (size_t b = 0; b < data.size() && k < n; ++b)
      for (int64_t j = 0; j < size[b] && k < n; ++j) out[k++] = data[b] + (m * size[b] + j) * 3;
  }
};

// colours [M, 3] = sum_k basis_k(dirs / |dirs|) coeffs[:, k] for dirs [M, 3], coeffs [M, K, 3].
at::Tensor sh_forward(int64_t degree, const at::Tensor& dirs, const std::vector<at::Tensor>& coeff_blocks) {
  check_float(dirs, "dirs");
  const int64_t M = dirs.size(0), B = (degree + 1) * (degree + 1);
  const CoefficientBlocks<const float> coeffs(coeff_blocks, M, "coeffs");
  TORCH_CHECK(degree >= 0 && degree <= 3 && B <= coeffs.K);
  at::Tensor colors = at::empty({M, 3}, dirs.options());
  const float* dir = dirs.data_ptr<float>();
  float* out = colors.data_ptr<float>();
  at::parallel_for(0, M, 2048, [&](int64_t begin, int64_t end) {
    float unit[3], basis[16];
    const float* cm[16];
    for (int64_t m = begin; m < end; ++m) {
      normalize(dir + 3 * m, unit);
      sh_basis(static_cast<int>(degree), unit[0], unit[1], unit[2], basis, nullptr);
      coeffs.row(m, B, cm);
      for (int ch = 0; ch < 3; ++ch) {
        float sum = 0.f;
        for (int64_t k = 0; k < B; ++k) sum += basis[k] * cm[k][ch];
        out[3 * m + ch] = sum;
      }
    }
  });
  return colors;
}

// Returns v_dirs [M, 3] and the gradient of each coefficient block (zero beyond the first
// (degree + 1)^2 coefficients).
std::vector<at::Tensor> sh_backward(int64_t degree, const at::Tensor& dirs, const std::vector<at::Tensor>& coeff_blocks,
                                    const at::Tensor& v_colors) {
  check_float(dirs, "dirs");
  check_float(v_colors, "v_colors");
  const int64_t M = dirs.size(0), B = (degree + 1) * (degree + 1);
  const CoefficientBlocks<const float> coeffs(coeff_blocks, M, "coeffs");
  std::vector<at::Tensor> outputs;
  for (const at::Tensor& b : coeff_blocks) outputs.push_back(at::empty_like(b));
  const CoefficientBlocks<float> v_coeffs(outputs, M, "v_coeffs");
  at::Tensor v_dirs = at::empty({M, 3}, dirs.options());
  const float *dir = dirs.data_ptr<float>(), *vcol = v_colors.data_ptr<float>();
  float* vd_out = v_dirs.data_ptr<float>();
  const int64_t K = coeffs.K;
  at::parallel_for(0, M, 2048, [&](int64_t begin, int64_t end) {
    float unit[3], basis[16], d_basis[16][3];
    std::vector<const float*> cm(K);
    std::vector<float*> vcm(K);
    for (int64_t m = begin; m < end; ++m) {
      const float norm = normalize(dir + 3 * m, unit);
      sh_basis(static_cast<int>(degree), unit[0], unit[1], unit[2], basis, d_basis);
      coeffs.row(m, B, cm.data());
      v_coeffs.row(m, K, vcm.data());
      const float* vc = vcol + 3 * m;
      float v_unit[3] = {0.f, 0.f, 0.f};
      for (int64_t k = 0; k < B; ++k) {
        const float v_basis = cm[k][0] * vc[0] + cm[k][1] * vc[1] + cm[k][2] * vc[2];
        for (int ch = 0; ch < 3; ++ch) vcm[k][ch] = basis[k] * vc[ch];
        for (int i = 0; i < 3; ++i) v_unit[i] += v_basis * d_basis[k][i];
      }
      for (int64_t k = B; k < K; ++k) std::fill(vcm[k], vcm[k] + 3, 0.f);
      // unit = dir / max(|dir|, eps): the norm only carries gradient when it exceeds eps
      const float dot = norm > kNormEps ? v_unit[0] * unit[0] + v_unit[1] * unit[1] + v_unit[2] * unit[2] : 0.f;
      for (int i = 0; i < 3; ++i) vd_out[3 * m + i] = (v_unit[i] - unit[i] * dot) / norm;
    }
  });
  outputs.insert(outputs.begin(), v_dirs);
  return outputs;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &project_forward, "EWA projection of Gaussians, forward (CPU)");
  m.def("project_backward", &project_backward, "EWA projection of Gaussians, backward (CPU)");
  m.def("sh_forward", &sh_forward, "Spherical-harmonics colours, forward (CPU)");
  m.def("sh_backward", &sh_backward, "Spherical-harmonics colours, backward (CPU)");
}
