#include "runtime/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/attention.h"
#include "runtime/rng.h"

namespace rw::runtime {

Status SamplingConfig::Validate() const {
  RW_REQUIRE(std::isfinite(temperature) && temperature >= 0, "--temperature: must be >= 0, got " << temperature);
  RW_REQUIRE(top_k >= 0, "--top-k: must be >= 0, got " << top_k);
  RW_REQUIRE(top_p > 0 && top_p <= 1, "--top-p: must be in (0, 1], got " << top_p);
  return Status::Ok();
}

Decoder::Decoder(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex)
    : c_(c), t_(t), p_(params), ex_(ex), k_cache_(c.num_hidden_layers),
      v_cache_(c.num_hidden_layers) {}

Status DecodeToken(const ModelConfig& c, const ParamTable& t, const float* p, const kernels::Exec& ex, int32_t token,
                   int64_t pos, const AttendFn& attend, std::vector<float>* logits) {
  RW_REQUIRE(token >= 0 && token < c.total_vocab(), "token: id " << token << " outside the vocabulary");
  const int64_t E = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, HKV = c.num_key_value_heads,
                D = c.head_dim();
  std::vector<float> x(E), h(E), q(H * D), k(HKV * D), v(HKV * D), attn(H * D), o(E), rstd(1);
  std::copy_n(p + t.embed + size_t(token) * E, E, x.begin());
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = t.layers[l];
    RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, 1, E, x.data(), p + L.in_norm, c.rms_norm_eps, h.data(), rstd.data()));
    RW_RETURN_IF_ERROR(kernels::LinearForward(ex, 1, E, H * D, h.data(), p + L.q, q.data()));
    RW_RETURN_IF_ERROR(kernels::LinearForward(ex, 1, E, HKV * D, h.data(), p + L.k, k.data()));
    RW_RETURN_IF_ERROR(kernels::LinearForward(ex, 1, E, HKV * D, h.data(), p + L.v, v.data()));
    RW_RETURN_IF_ERROR(kernels::Rope(ex, 1, H, D, kernels::Dense3(q.data(), H, D), kernels::Dense3(q.data(), H, D), &pos,
                                     c.rope_theta, false));
    RW_RETURN_IF_ERROR(kernels::Rope(ex, 1, HKV, D, kernels::Dense3(k.data(), HKV, D), kernels::Dense3(k.data(), HKV, D),
                                     &pos, c.rope_theta, false));
    RW_RETURN_IF_ERROR(attend(l, q.data(), k.data(), v.data(), attn.data()));
    RW_RETURN_IF_ERROR(kernels::LinearForward(ex, 1, H * D, E, attn.data(), p + L.o, o.data()));
    for (int64_t i = 0; i < E; ++i) x[i] += o[i];
    RW_RETURN_IF_ERROR(
        kernels::RmsNormForward(ex, 1, E, x.data(), p + L.post_norm, c.rms_norm_eps, h.data(), rstd.data()));
    RW_RETURN_IF_ERROR(kernels::FfnForward(ex, 1, E, F, h.data(), {p + L.gate, p + L.up, p + L.down}, o.data()));
    for (int64_t i = 0; i < E; ++i) x[i] += o[i];
  }
  RW_RETURN_IF_ERROR(
      kernels::RmsNormForward(ex, 1, E, x.data(), p + t.final_norm, c.rms_norm_eps, h.data(), rstd.data()));
  // lm_head and vision_head are one (total_vocab, E) matrix: the logits of every id, text then vision.
  logits->resize(c.total_vocab());
  return kernels::LinearForward(ex, 1, E, c.total_vocab(), h.data(), p + t.lm_head, logits->data());
}

Status Decoder::Step(int32_t token, std::vector<float>* logits) {
  const int64_t H = c_.num_attention_heads, HKV = c_.num_key_value_heads, D = c_.head_dim();
  const int64_t pos = pos_;
  std::vector<float> lse(H);
  auto attend = [&](int64_t l, const float* q, const float* k, const float* v, float* out) -> Status {
    auto& kc = k_cache_[l];
    auto& vc = v_cache_[l];
    kc.insert(kc.end(), k, k + HKV * D);
    vc.insert(vc.end(), v, v + HKV * D);
    kernels::AttentionParams a;
    a.device = ex_.device;
    a.sq = 1;
    a.sk = pos + 1;
    a.hq = H;
    a.hkv = HKV;
    a.d = D;
    a.causal = true;  // the new row sits at `pos` and sees keys 0..pos
    a.q_tok.offset = pos;
    a.q = kernels::Dense3(q, H, D);
    a.k = kernels::Dense3(kc.data(), HKV, D);
    a.v = kernels::Dense3(vc.data(), HKV, D);
    a.o = kernels::Dense3(out, H, D);
    a.lse = lse.data();
    a.num_threads = ex_.num_threads;
    return kernels::AttentionForward(a);
  };
  RW_RETURN_IF_ERROR(DecodeToken(c_, t_, p_, ex_, token, pos, attend, logits));
  ++pos_;
  return Status::Ok();
}

int32_t Sample(const std::vector<float>& logits, const SamplingConfig& s, uint64_t* rng) {
  const int64_t V = int64_t(logits.size());
  if (s.temperature == 0) return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  const int64_t keep_k = s.top_k > 0 ? std::min<int64_t>(s.top_k, V) : V;
  std::vector<double> prob(keep_k);
  double total = 0;
  for (int64_t i = 0; i < keep_k; ++i) total += prob[i] = std::exp((logits[order[i]] - logits[order[0]]) / s.temperature);
  int64_t keep = keep_k;  // nucleus: the smallest prefix holding top_p of the mass
  double mass = 0;
  for (int64_t i = 0; i < keep_k; ++i) {
    mass += prob[i] / total;
    if (mass >= s.top_p) {
      keep = i + 1;
      break;
    }
  }
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += prob[i];
  *rng = Mix(*rng);
  double u = double(*rng >> 11) / 9007199254740992.0 * sum;
  for (int64_t i = 0; i < keep; ++i) {
    u -= prob[i];
    if (u <= 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace rw::runtime
