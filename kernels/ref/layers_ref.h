// Scalar references of the per-token layers and AdamW: the spec. Plain loops, fp64 accumulation, no
// blocking. Templated on T so tests can run them in fp64 for finite-difference gradient checks.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/layers.h"

namespace rw::kernels::ref {

template <class T>
void LinearForward(int64_t n, int64_t in, int64_t out, const T* x, const T* w, T* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t j = 0; j < in; ++j) acc += double(x[i * in + j]) * double(w[o * in + j]);
      y[i * out + o] = T(acc);
    }
}

template <class T>
void LinearBackward(int64_t n, int64_t in, int64_t out, const T* x, const T* w, const T* dy, T* dx, T* dw) {
  if (dx)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < in; ++j) {
        double acc = 0;
        for (int64_t o = 0; o < out; ++o) acc += double(dy[i * out + o]) * double(w[o * in + j]);
        dx[i * in + j] = T(acc);
      }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < in; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += double(dy[i * out + o]) * double(x[i * in + j]);
      dw[o * in + j] += T(acc);
    }
}

template <class T>
void RmsNormForward(int64_t n, int64_t e, const T* x, const T* w, double eps, T* y, T* rstd) {
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < e; ++j) ss += double(x[i * e + j]) * double(x[i * e + j]);
    const double r = 1.0 / std::sqrt(ss / double(e) + eps);
    for (int64_t j = 0; j < e; ++j) y[i * e + j] = T(double(x[i * e + j]) * r * double(w[j]));
    rstd[i] = T(r);
  }
}

template <class T>
void RmsNormBackward(int64_t n, int64_t e, const T* x, const T* w, const T* rstd, const T* dy, T* dx,
                     T* dw) {
  for (int64_t i = 0; i < n; ++i) {
    const double r = rstd[i];
    double dot = 0;  // mean(x * w * dy)
    for (int64_t j = 0; j < e; ++j) dot += double(x[i * e + j]) * double(w[j]) * double(dy[i * e + j]);
    dot /= double(e);
    for (int64_t j = 0; j < e; ++j) {
      const double xj = x[i * e + j], gj = dy[i * e + j];
      dx[i * e + j] = T(r * (double(w[j]) * gj - xj * r * r * dot));
      dw[j] += T(gj * xj * r);
    }
  }
}

template <class T>
void Rope(int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos, double theta,
          bool inverse) {
  const int64_t half = d / 2;
  for (int64_t t = 0; t < s; ++t)
    for (int64_t hh = 0; hh < h; ++hh) {
      const T* in = x.at<T>(t, hh);
      T* out = y.at<T>(t, hh);
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(pos[t]) * std::pow(theta, -2.0 * double(i) / double(d));
        const double c = std::cos(a), sn = inverse ? -std::sin(a) : std::sin(a);
        const double x0 = in[i], x1 = in[i + half];
        out[i] = T(x0 * c - x1 * sn);
        out[i + half] = T(x1 * c + x0 * sn);
      }
    }
}

inline double Sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

template <class T>
void FfnForward(int64_t n, int64_t e, int64_t f, const T* x, const T* wg, const T* wu, const T* wd, T* y) {
  std::vector<double> a(f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < f; ++k) {
      double g = 0, u = 0;
      for (int64_t j = 0; j < e; ++j) {
        g += double(x[i * e + j]) * double(wg[k * e + j]);
        u += double(x[i * e + j]) * double(wu[k * e + j]);
      }
      a[k] = g * Sigmoid(g) * u;
    }
    for (int64_t j = 0; j < e; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < f; ++k) acc += a[k] * double(wd[j * f + k]);
      y[i * e + j] = T(acc);
    }
  }
}

template <class T>
void FfnBackward(int64_t n, int64_t e, int64_t f, const T* x, const T* wg, const T* wu, const T* wd,
                 const T* dy, T* dx, T* dwg, T* dwu, T* dwd) {
  std::vector<double> dgv(f), duv(f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < f; ++k) {
      double g = 0, u = 0, da = 0;
      for (int64_t j = 0; j < e; ++j) {
        g += double(x[i * e + j]) * double(wg[k * e + j]);
        u += double(x[i * e + j]) * double(wu[k * e + j]);
      }
      for (int64_t j = 0; j < e; ++j) da += double(dy[i * e + j]) * double(wd[j * f + k]);
      const double sg = Sigmoid(g), silu = g * sg;
      for (int64_t j = 0; j < e; ++j) dwd[j * f + k] += T(double(dy[i * e + j]) * silu * u);
      duv[k] = da * silu;
      dgv[k] = da * u * sg * (1.0 + g * (1.0 - sg));  // d silu/dg = s (1 + g (1 - s))
    }
    for (int64_t j = 0; j < e; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < f; ++k) {
        acc += dgv[k] * double(wg[k * e + j]) + duv[k] * double(wu[k * e + j]);
        dwg[k * e + j] += T(dgv[k] * double(x[i * e + j]));
        dwu[k * e + j] += T(duv[k] * double(x[i * e + j]));
      }
      dx[i * e + j] = T(acc);
    }
  }
}

// Fills logits (V) of row i in fp64.
template <class T>
void Logits(int64_t e, int64_t vocab, const T* hi, const T* w, std::vector<double>& z) {
  for (int64_t c = 0; c < vocab; ++c) {
    double acc = 0;
    for (int64_t j = 0; j < e; ++j) acc += double(hi[j]) * double(w[c * e + j]);
    z[c] = acc;
  }
}

template <class T>
double LogSumExp(const std::vector<double>& z) {
  double m = z[0];
  for (double v : z) m = std::max(m, v);
  double s = 0;
  for (double v : z) s += std::exp(v - m);
  return m + std::log(s);
}

template <class T>
double CrossEntropyForward(int64_t n, int64_t e, int64_t vocab, const T* h, const T* w,
                           const int32_t* target, const T* weight, T* loss) {
  std::vector<double> z(vocab);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] < 0) {
      loss[i] = T(0);
      continue;
    }
    Logits(e, vocab, h + i * e, w, z);
    const double li = LogSumExp<T>(z) - z[target[i]];
    loss[i] = T(li);
    total += (weight ? double(weight[i]) : 1.0) * li;
  }
  return total;
}

template <class T>
void CrossEntropyBackward(int64_t n, int64_t e, int64_t vocab, const T* h, const T* w,
                          const int32_t* target, const T* weight, double grad_scale, T* dh, T* dw) {
  std::vector<double> z(vocab);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < e; ++j) dh[i * e + j] = T(0);
    const double wi = weight ? double(weight[i]) : 1.0;
    if (target[i] < 0 || wi == 0.0) continue;
    Logits(e, vocab, h + i * e, w, z);
    const double lse = LogSumExp<T>(z);
    for (int64_t c = 0; c < vocab; ++c) {
      const double dz = grad_scale * wi * (std::exp(z[c] - lse) - (c == target[i] ? 1.0 : 0.0));
      for (int64_t j = 0; j < e; ++j) {
        dh[i * e + j] += T(dz * double(w[c * e + j]));
        dw[c * e + j] += T(dz * double(h[i * e + j]));
      }
    }
  }
}

template <class T>
void AdamWStep(int64_t n, T* p, const T* g, T* m, T* v, const AdamWHyper& hp, int64_t step) {
  const double b1 = hp.beta1, b2 = hp.beta2;
  const double c1 = 1.0 - std::pow(b1, double(step)), c2 = 1.0 - std::pow(b2, double(step));
  for (int64_t i = 0; i < n; ++i) {
    double pi = double(p[i]) * (1.0 - double(hp.lr) * double(hp.weight_decay));
    const double mi = b1 * double(m[i]) + (1.0 - b1) * double(g[i]);
    const double vi = b2 * double(v[i]) + (1.0 - b2) * double(g[i]) * double(g[i]);
    pi -= double(hp.lr) * (mi / c1) / (std::sqrt(vi / c2) + double(hp.eps));
    p[i] = T(pi);
    m[i] = T(mi);
    v[i] = T(vi);
  }
}

}  // namespace rw::kernels::ref
