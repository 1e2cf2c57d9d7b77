// Scalar reference attention: the spec. Readable loops, no blocking, fp64 accumulation.
// Templated on the element type so tests can run the same code in fp64 for finite differences;
// lse/delta are passed explicitly as T* for that reason (AttentionParams carries them as float*).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"

namespace rw::kernels::ref {

// True when query row i may attend to key row j.
inline bool Allowed(const AttentionParams& p, int64_t i, int64_t j) {
  const int32_t sq = p.q_tok.Segment(i), sk = p.k_tok.Segment(j);
  if (sq < 0 || sk < 0 || sq != sk) return false;
  return !p.causal || p.k_tok.Index(j) <= p.q_tok.Index(i);
}

// o, lse := softmax(c q k^T) v, computed row by row from the full score row.
template <class T>
void AttentionForward(const AttentionParams& p, T* lse) {
  const double c = p.Scale();
  const int64_t group = p.hq / p.hkv;
  std::vector<double> s(p.sk);
  for (int64_t h = 0; h < p.hq; ++h) {
    const int64_t hk = h / group;
    for (int64_t i = 0; i < p.sq; ++i) {
      const T* qi = p.q.at<T>(i, h);
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < p.sk; ++j) {
        if (!Allowed(p, i, j)) {
          s[j] = -std::numeric_limits<double>::infinity();
          continue;
        }
        const T* kj = p.k.at<T>(j, hk);
        double dot = 0;
        for (int64_t x = 0; x < p.d; ++x) dot += double(qi[x]) * double(kj[x]);
        s[j] = c * dot;
        m = std::max(m, s[j]);
      }
      T* oi = p.o.at<T>(i, h);
      if (m == -std::numeric_limits<double>::infinity()) {  // fully masked row
        for (int64_t x = 0; x < p.d; ++x) oi[x] = T(0);
        lse[h * p.sq + i] = -std::numeric_limits<T>::infinity();
        continue;
      }
      double l = 0;
      for (int64_t j = 0; j < p.sk; ++j) l += std::exp(s[j] - m);
      const double row_lse = m + std::log(l);
      std::vector<double> acc(p.d, 0.0);
      for (int64_t j = 0; j < p.sk; ++j) {
        if (s[j] == -std::numeric_limits<double>::infinity()) continue;
        const double pij = std::exp(s[j] - row_lse);
        const T* vj = p.v.at<T>(j, hk);
        for (int64_t x = 0; x < p.d; ++x) acc[x] += pij * double(vj[x]);
      }
      for (int64_t x = 0; x < p.d; ++x) oi[x] = T(acc[x]);
      lse[h * p.sq + i] = T(row_lse);
    }
  }
}

// delta := rowsum(dout * o)
template <class T>
void AttentionBackwardPrep(const AttentionParams& p, T* delta) {
  for (int64_t h = 0; h < p.hq; ++h)
    for (int64_t i = 0; i < p.sq; ++i) {
      const T* oi = p.o.at<T>(i, h);
      const T* gi = p.dout.at<T>(i, h);
      double acc = 0;
      for (int64_t x = 0; x < p.d; ++x) acc += double(oi[x]) * double(gi[x]);
      delta[h * p.sq + i] = T(acc);
    }
}

// dq, dk, dv += gradients of this (q, kv) pair given the final lse and delta. G is the gradient type
// (float for the oracle, double for finite-difference checks).
template <class T, class G>
void AttentionBackward(const AttentionParams& p, const T* lse, const T* delta) {
  const double c = p.Scale();
  const int64_t group = p.hq / p.hkv;
  for (int64_t h = 0; h < p.hq; ++h) {
    const int64_t hk = h / group;
    for (int64_t i = 0; i < p.sq; ++i) {
      const double row_lse = lse[h * p.sq + i];
      if (row_lse == -std::numeric_limits<double>::infinity()) continue;  // no key: no gradient
      const T* qi = p.q.at<T>(i, h);
      const T* gi = p.dout.at<T>(i, h);
      G* dqi = p.dq.at<G>(i, h);
      std::vector<double> dq_acc(p.d, 0.0);
      for (int64_t j = 0; j < p.sk; ++j) {
        if (!Allowed(p, i, j)) continue;
        const T* kj = p.k.at<T>(j, hk);
        const T* vj = p.v.at<T>(j, hk);
        double dot = 0, dp = 0;
        for (int64_t x = 0; x < p.d; ++x) {
          dot += double(qi[x]) * double(kj[x]);
          dp += double(gi[x]) * double(vj[x]);
        }
        const double pij = std::exp(c * dot - row_lse);
        const double ds = pij * (dp - double(delta[h * p.sq + i]));
        G* dkj = p.dk.at<G>(j, hk);
        G* dvj = p.dv.at<G>(j, hk);
        for (int64_t x = 0; x < p.d; ++x) {
          dvj[x] += G(pij * double(gi[x]));
          dkj[x] += G(c * ds * double(qi[x]));
          dq_acc[x] += c * ds * double(kj[x]);
        }
      }
      for (int64_t x = 0; x < p.d; ++x) dqi[x] += G(dq_acc[x]);
    }
  }
}

// Online-softmax merge of (o_part, lse_part) into (o_acc, lse_acc).
template <class T>
void AttentionMerge(int64_t sq, int64_t hq, int64_t d, View3 o_acc, T* lse_acc, View3 o_part,
                    const T* lse_part) {
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t h = 0; h < hq; ++h)
    for (int64_t i = 0; i < sq; ++i) {
      const double a = lse_acc[h * sq + i], b = lse_part[h * sq + i];
      const double m = std::max(a, b);
      if (m == ninf) continue;  // both empty
      const double lse = m + std::log(std::exp(a - m) + std::exp(b - m));
      const double wa = std::exp(a - lse), wb = std::exp(b - lse);
      T* oa = o_acc.at<T>(i, h);
      const T* ob = o_part.at<T>(i, h);
      for (int64_t x = 0; x < d; ++x) oa[x] = T(wa * double(oa[x]) + wb * double(ob[x]));
      lse_acc[h * sq + i] = T(lse);
    }
}

}  // namespace rw::kernels::ref
