// Runs one attention case on any device: builds token arrays, moves inputs to the device (converting q, k,
// v, dout to bf16/f16 when the case runs in one), runs forward + prep + backward, and brings results back
// as fp32 host vectors. o comes back in the backend's o dtype: the input dtype on CUDA, fp32 on the CPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/device_memory.h"
#include "test_util.h"

namespace rw::test {

using kernels::AttentionParams;
using kernels::Device;
using kernels::DType;

struct AttnCase {
  std::string name;
  int64_t sq, sk, hq, hkv, d;
  bool causal;
  int block_q = 0, block_k = 0;
  int64_t q_offset = 0, k_offset = 0;  // global index of row 0 (contiguous shards)
  int64_t doc_len = 0;                 // >0: documents of this length (by global index) -> segment ids
  int64_t pad_q = 0, pad_k = 0;        // trailing rows with segment -1 (padding)
  bool zigzag = false;                 // explicit index arrays: q holds chunks {0, 3}, k chunks {1, 2} of 4
  bool explicit_index = false;         // pass index arrays even for offsets (exercise that path)
};

inline void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

struct AttnTokens {
  std::vector<int64_t> qidx, kidx;
  std::vector<int32_t> qseg, kseg;
  bool use_index = false, use_seg = false;
};

inline AttnTokens MakeTokens(const AttnCase& c) {
  AttnTokens t;
  t.qidx.resize(c.sq);
  t.kidx.resize(c.sk);
  for (int64_t i = 0; i < c.sq; ++i) t.qidx[i] = c.q_offset + i;
  for (int64_t j = 0; j < c.sk; ++j) t.kidx[j] = c.k_offset + j;
  if (c.zigzag) {  // 4 chunks of length C: q = chunks 0 and 3, k = chunks 1 and 2 (rank 0 of R=2)
    const int64_t cq = c.sq / 2, ck = c.sk / 2, chunk = std::max(cq, ck);
    for (int64_t i = 0; i < c.sq; ++i) t.qidx[i] = i < cq ? i : 3 * chunk + (i - cq);
    for (int64_t j = 0; j < c.sk; ++j) t.kidx[j] = j < ck ? chunk + j : 2 * chunk + (j - ck);
  }
  t.use_index = c.zigzag || c.explicit_index;
  t.use_seg = c.doc_len > 0 || c.pad_q > 0 || c.pad_k > 0;
  t.qseg.assign(c.sq, 0);
  t.kseg.assign(c.sk, 0);
  if (c.doc_len > 0) {
    for (int64_t i = 0; i < c.sq; ++i) t.qseg[i] = int32_t(t.qidx[i] / c.doc_len);
    for (int64_t j = 0; j < c.sk; ++j) t.kseg[j] = int32_t(t.kidx[j] / c.doc_len);
  }
  for (int64_t i = c.sq - c.pad_q; i < c.sq; ++i) t.qseg[i] = -1;
  for (int64_t j = c.sk - c.pad_k; j < c.sk; ++j) t.kseg[j] = -1;
  return t;
}

struct AttnInputs {
  std::vector<float> q, k, v, dout, dq0, dk0, dv0;  // dq0..: initial gradient buffers (+= semantics)
};

inline AttnInputs MakeInputs(const AttnCase& c, uint64_t seed) {
  AttnInputs in;
  in.q = Random(c.sq * c.hq * c.d, seed + 1);
  in.k = Random(c.sk * c.hkv * c.d, seed + 2);
  in.v = Random(c.sk * c.hkv * c.d, seed + 3);
  in.dout = Random(c.sq * c.hq * c.d, seed + 4);
  in.dq0 = Random(c.sq * c.hq * c.d, seed + 5, 0.1);
  in.dk0 = Random(c.sk * c.hkv * c.d, seed + 6, 0.1);
  in.dv0 = Random(c.sk * c.hkv * c.d, seed + 7, 0.1);
  return in;
}

struct AttnOutputs {
  std::vector<float> o, lse, delta, dq, dk, dv;
};

// Rounds inputs to what the device will see in dtype `dt` so a reference can run on the same values.
inline AttnInputs RoundFor(DType dt, AttnInputs in) {
  if (dt == DType::kF32) return in;
  for (auto* v : {&in.q, &in.k, &in.v, &in.dout}) *v = kernels::FromHalf(dt, kernels::ToHalf(dt, *v));
  return in;
}

inline AttnOutputs RunAttention(Device dev, const AttnCase& c, const AttnInputs& in,
                                DType dt = DType::kF32) {
  using kernels::CopyToDevice;
  using kernels::CopyToHost;
  using kernels::DeviceBuffer;
  const bool half = dt != DType::kF32;
  const DType o_dt = dev == Device::kCuda ? dt : DType::kF32;
  const size_t es = kernels::DTypeSize(dt);
  auto upload = [&](const std::vector<float>& x) {
    DeviceBuffer b(dev, x.size() * es);
    if (half) {
      auto h = kernels::ToHalf(dt, x);
      EXPECT_TRUE(CopyToDevice(dev, b.get(), h.data(), h.size() * 2).ok());
    } else {
      EXPECT_TRUE(CopyToDevice(dev, b.get(), x.data(), x.size() * 4).ok());
    }
    return b;
  };
  auto upload_f32 = [&](const std::vector<float>& x) {
    DeviceBuffer b(dev, x.size() * 4);
    EXPECT_TRUE(CopyToDevice(dev, b.get(), x.data(), x.size() * 4).ok());
    return b;
  };
  auto download = [&](const DeviceBuffer& b, size_t n, bool is_half) {
    std::vector<float> out(n);
    if (is_half) {
      std::vector<uint16_t> h(n);
      EXPECT_TRUE(CopyToHost(dev, h.data(), b.get(), n * 2).ok());
      out = kernels::FromHalf(dt, h);
    } else {
      EXPECT_TRUE(CopyToHost(dev, out.data(), b.get(), n * 4).ok());
    }
    return out;
  };
  const AttnTokens tok = MakeTokens(c);
  DeviceBuffer qidx(dev, c.sq * 8 + 8), kidx(dev, c.sk * 8 + 8), qseg(dev, c.sq * 4 + 4),
      kseg(dev, c.sk * 4 + 4);
  EXPECT_TRUE(CopyToDevice(dev, qidx.get(), tok.qidx.data(), c.sq * 8).ok());
  EXPECT_TRUE(CopyToDevice(dev, kidx.get(), tok.kidx.data(), c.sk * 8).ok());
  EXPECT_TRUE(CopyToDevice(dev, qseg.get(), tok.qseg.data(), c.sq * 4).ok());
  EXPECT_TRUE(CopyToDevice(dev, kseg.get(), tok.kseg.data(), c.sk * 4).ok());

  DeviceBuffer q = upload(in.q), k = upload(in.k), v = upload(in.v), dout = upload(in.dout);
  DeviceBuffer o(dev, c.sq * c.hq * c.d * kernels::DTypeSize(o_dt)), lse(dev, c.hq * c.sq * 4 + 4), delta(dev, c.hq * c.sq * 4 + 4);
  DeviceBuffer dq = upload_f32(in.dq0), dk = upload_f32(in.dk0), dv = upload_f32(in.dv0);

  AttentionParams p;
  p.device = dev;
  p.dtype = dt;
  p.o_dtype = o_dt;
  p.sq = c.sq;
  p.sk = c.sk;
  p.hq = c.hq;
  p.hkv = c.hkv;
  p.d = c.d;
  p.q = kernels::Dense3(q.get(), c.hq, c.d);
  p.k = kernels::Dense3(k.get(), c.hkv, c.d);
  p.v = kernels::Dense3(v.get(), c.hkv, c.d);
  p.o = kernels::Dense3(o.get(), c.hq, c.d);
  p.lse = lse.as<float>();
  p.causal = c.causal;
  p.block_q = c.block_q;
  p.block_k = c.block_k;
  p.q_tok.offset = c.q_offset;
  p.k_tok.offset = c.k_offset;
  if (tok.use_index) {
    p.q_tok.index = qidx.as<int64_t>();
    p.k_tok.index = kidx.as<int64_t>();
  }
  if (tok.use_seg) {
    p.q_tok.segment = qseg.as<int32_t>();
    p.k_tok.segment = kseg.as<int32_t>();
  }
  p.dout = kernels::Dense3(dout.get(), c.hq, c.d);
  p.delta = delta.as<float>();
  p.dq = kernels::Dense3(dq.get(), c.hq, c.d);
  p.dk = kernels::Dense3(dk.get(), c.hkv, c.d);
  p.dv = kernels::Dense3(dv.get(), c.hkv, c.d);

  auto st = kernels::AttentionForward(p);
  EXPECT_TRUE(st.ok()) << st.message();
  st = kernels::AttentionBackwardPrep(p);
  EXPECT_TRUE(st.ok()) << st.message();
  st = kernels::AttentionBackward(p);
  EXPECT_TRUE(st.ok()) << st.message();
  EXPECT_TRUE(kernels::DeviceSynchronize(dev).ok());

  AttnOutputs out;
  out.o = download(o, c.sq * c.hq * c.d, o_dt != DType::kF32);
  out.lse = download(lse, c.hq * c.sq, false);
  out.delta = download(delta, c.hq * c.sq, false);
  out.dq = download(dq, in.dq0.size(), false);
  out.dk = download(dk, in.dk0.size(), false);
  out.dv = download(dv, in.dv0.size(), false);
  return out;
}

}  // namespace rw::test
