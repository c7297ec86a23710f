// SSIM with an 11-tap Gaussian window (sigma 1.5) and reflect padding, and its gradient, on the CPU.
//
// Same definition as recon.metrics' torch path (and torchmetrics): the five local statistics
// mu_x, mu_y, E[x^2], E[y^2], E[xy] are separable blurs of reflect-padded planes; the map is
// (2 mu_x mu_y + c1)(2 cov + c2) / ((mu_x^2 + mu_y^2 + c1)(var_x + var_y + c2)) with variances
// clamped at 0. The forward also returns, per pixel, dS/dmu_x, dS/dE[x^2] and dS/dE[xy]; the
// backward blurs them with the adjoint window (zero-extended correlation folded back through the
// reflection) and combines: dL/dx = B^T(g dS/dmu_x) + 2 x B^T(g dS/dE[x^2]) + y B^T(g dS/dE[xy]).
#include <torch/extension.h>

#include <vector>

namespace {

constexpr int kTaps = 11, kPad = kTaps / 2;
constexpr float kC1 = 0.01f * 0.01f, kC2 = 0.03f * 0.03f;

struct Window {
  float w[kTaps];
  Window() {
    double raw[kTaps], sum = 0.0;
    for (int t = 0; t < kTaps; ++t) sum += raw[t] = std::exp(-0.5 * ((t - kPad) / 1.5) * ((t - kPad) / 1.5));
    for (int t = 0; t < kTaps; ++t) w[t] = static_cast<float>(raw[t] / sum);
  }
};
const Window kWindow;

inline int reflect(int i, int n) { return i < 0 ? -i : i >= n ? 2 * n - 2 - i : i; }

// The blur along one axis is B[k][m] = sum of w[t] over t with reflect(k + t - kPad) = m. Its
// adjoint B^T[m][k] is a zero-extended correlation folded back through the reflection: index i in
// [-kPad, n + kPad) lands on reflect(i), so m receives from i = m, -m (m > 0) and 2n - 2 - m (m < n - 1).

// Along rows (contiguous): out[r][k] = (B in[r])[k], or B^T with `adjoint`.
void blur_rows(const float* in, float* out, int64_t rows, int n, bool adjoint) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> padded(n + 2 * kPad);
    for (int64_t r = begin; r < end; ++r) {
      const float* src = in + r * n;
      float* dst = out + r * n;
      if (!adjoint) {
        for (int j = 0; j < n + 2 * kPad; ++j) padded[j] = src[reflect(j - kPad, n)];
        std::fill(dst, dst + n, 0.f);
        for (int t = 0; t < kTaps; ++t)
          for (int k = 0; k < n; ++k) dst[k] += kWindow.w[t] * padded[k + t];
      } else {
        std::fill(padded.begin(), padded.end(), 0.f);  // padded[k + t] += w[t] src[k]
        for (int t = 0; t < kTaps; ++t)
          for (int k = 0; k < n; ++k) padded[k + t] += kWindow.w[t] * src[k];
        std::copy(padded.begin() + kPad, padded.begin() + kPad + n, dst);
        for (int j = 0; j < kPad; ++j) dst[reflect(j - kPad, n)] += padded[j];
        for (int j = n + kPad; j < n + 2 * kPad; ++j) dst[reflect(j - kPad, n)] += padded[j];
      }
    }
  });
}

// Along columns of `planes` planes [n, width]: whole rows at a time, out[k] = sum of w[t] in[m].
void blur_columns(const float* in, float* out, int64_t planes, int n, int64_t width, bool adjoint) {
  at::parallel_for(0, planes * n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / n;
      const int k = static_cast<int>(row % n);
      float* dst = out + row * width;
      std::fill(dst, dst + width, 0.f);
      auto add = [&](float weight, int m) {
        const float* src = in + (p * n + m) * width;
        for (int64_t x = 0; x < width; ++x) dst[x] += weight * src[x];
      };
      for (int t = 0; t < kTaps; ++t) {
        if (!adjoint) {
          add(kWindow.w[t], reflect(k + t - kPad, n));
          continue;
        }
        const std::pair<int, bool> positions[] = {{k, true}, {-k, k > 0}, {2 * n - 2 - k, k < n - 1}};
        for (const auto& [i, lands] : positions) {  // the padded positions that reflect onto row k
          const int m = i - t + kPad;  // the output row whose window tap t reads position i
          if (lands && m >= 0 && m < n) add(kWindow.w[t], m);
        }
      }
    }
  });
}

// Separable 2D blur B (rows, then columns) of P planes [P, H, W]; `adjoint` applies B^T.
at::Tensor blur(const at::Tensor& planes, bool adjoint) {
  const int64_t P = planes.size(0), H = planes.size(1), W = planes.size(2);
  at::Tensor tmp = at::empty_like(planes), out = at::empty_like(planes);
  if (!adjoint) {
    blur_rows(planes.data_ptr<float>(), tmp.data_ptr<float>(), P * H, W, false);
    blur_columns(tmp.data_ptr<float>(), out.data_ptr<float>(), P, H, W, false);
  } else {  // (C R)^T = R^T C^T
    blur_columns(planes.data_ptr<float>(), tmp.data_ptr<float>(), P, H, W, true);
    blur_rows(tmp.data_ptr<float>(), out.data_ptr<float>(), P * H, W, true);
  }
  return out;
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == 3, name,
              " must be a contiguous float32 CPU tensor [P, H, W]");
}

}  // namespace

// x, y [P, H, W] planes -> (per-plane mean SSIM [P], dS/d(mu_x, E[x^2], E[xy]) [3, P, H, W]).
std::vector<at::Tensor> ssim_forward(const at::Tensor& x, const at::Tensor& y) {
  check(x, "x");
  check(y, "y");
  TORCH_CHECK(x.sizes() == y.sizes(), "ssim: x and y differ in shape");
  const int64_t P = x.size(0), H = x.size(1), W = x.size(2), HW = H * W;
  TORCH_CHECK(H > kPad && W > kPad, "ssim: images must be larger than 5x5 pixels (reflect padding)");
  const at::Tensor stats = blur(at::cat({x, y, x * x, y * y, x * y}), false);  // [5P, H, W]
  const float* s = stats.data_ptr<float>();
  at::Tensor partials = at::empty({3, P, H, W}, x.options());
  at::Tensor sums = at::empty({P}, x.options().dtype(at::kDouble));
  float* d = partials.data_ptr<float>();
  for (int64_t p = 0; p < P; ++p) {
    const float *mx = s + p * HW, *my = s + (P + p) * HW, *xx = s + (2 * P + p) * HW, *yy = s + (3 * P + p) * HW,
                *xy = s + (4 * P + p) * HW;
    float *d_mx = d + p * HW, *d_xx = d + (P + p) * HW, *d_xy = d + (2 * P + p) * HW;
    sums.data_ptr<double>()[p] = at::parallel_reduce(0, HW, 4096, 0.0, [&](int64_t begin, int64_t end, double acc) {
      for (int64_t i = begin; i < end; ++i) {
        const float raw_vx = xx[i] - mx[i] * mx[i], raw_vy = yy[i] - my[i] * my[i];
        const float vx = std::max(raw_vx, 0.f), vy = std::max(raw_vy, 0.f), cov = xy[i] - mx[i] * my[i];
        const float A = 2.f * mx[i] * my[i] + kC1, B = 2.f * cov + kC2;
        const float C = mx[i] * mx[i] + my[i] * my[i] + kC1, D = vx + vy + kC2;
        const float S = A * B / (C * D);
        const float dA = B / (C * D), dB = A / (C * D), dC = -S / C, dD = -S / D;
        const bool open_x = raw_vx >= 0.f;  // clamp_min passes the gradient where not clamped
        d_mx[i] = 2.f * my[i] * (dA - dB) + 2.f * mx[i] * dC - (open_x ? 2.f * mx[i] * dD : 0.f);
        d_xx[i] = open_x ? dD : 0.f;
        d_xy[i] = 2.f * dB;
        acc += S;
      }
      return acc;
    }, std::plus<double>());
  }
  return {(sums / static_cast<double>(HW)).to(at::kFloat), partials};
}

// dL/dx [P, H, W] given the forward's partials and g [P] = dL/d(per-plane mean SSIM).
at::Tensor ssim_backward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& partials, const at::Tensor& g) {
  check(x, "x");
  check(y, "y");
  const int64_t P = x.size(0), H = x.size(1), W = x.size(2);
  const at::Tensor scaled = (partials * (g / static_cast<double>(H * W)).view({1, P, 1, 1})).reshape({3 * P, H, W});
  const at::Tensor back = blur(scaled.contiguous(), true).view({3, P, H, W});
  return back[0] + 2.f * x * back[1] + y * back[2];
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ssim_forward, "SSIM (11-tap Gaussian, reflect padding) per plane, with partials (CPU)");
  m.def("backward", &ssim_backward, "SSIM gradient with respect to x (CPU)");
}
