#include "runtime/vqgan.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/vision.h"
#include "runtime/json_fields.h"
#include "runtime/safetensors.h"

namespace rw::runtime {

Status VqganConfig::Validate() const {
  RW_REQUIRE(!channel_mult.empty() && channel_mult.size() <= 8,
             "channel_mult: 1 to 8 levels, got " << channel_mult.size());
  for (size_t i = 0; i < channel_mult.size(); ++i)
    RW_REQUIRE(channel_mult[i] >= 1 && channel_mult[i] <= 64, "channel_mult[" << i << "]: must be in [1, 64], got "
                                                                                 << channel_mult[i]);
  RW_REQUIRE(resolution >= 1 && resolution <= 8192, "resolution: must be in [1, 8192], got " << resolution);
  RW_REQUIRE(resolution % (int64_t(1) << (levels() - 1)) == 0,
             "resolution: " << resolution << " does not halve " << levels() - 1 << " times");
  RW_REQUIRE(num_channels >= 1 && num_channels <= 16, "num_channels: must be in [1, 16], got " << num_channels);
  RW_REQUIRE(hidden_channels >= 1 && hidden_channels <= 4096,
             "hidden_channels: must be in [1, 4096], got " << hidden_channels);
  RW_REQUIRE(num_res_blocks >= 1 && num_res_blocks <= 16, "num_res_blocks: must be in [1, 16], got " << num_res_blocks);
  RW_REQUIRE(z_channels >= 1 && z_channels <= 4096, "z_channels: must be in [1, 4096], got " << z_channels);
  RW_REQUIRE(quantized_embed_dim >= 1 && quantized_embed_dim <= 4096,
             "quantized_embed_dim: must be in [1, 4096], got " << quantized_embed_dim);
  RW_REQUIRE(num_embeddings >= 1 && num_embeddings <= (int64_t(1) << 20),
             "num_embeddings: must be in [1, 2^20], got " << num_embeddings);
  RW_REQUIRE(norm_groups >= 1, "norm_groups: must be >= 1, got " << norm_groups);
  RW_REQUIRE(norm_eps > 0 && norm_eps < 1, "norm_eps: must be in (0, 1), got " << norm_eps);
  RW_REQUIRE(hidden_channels % norm_groups == 0,
             "norm_groups: " << norm_groups << " does not divide hidden_channels " << hidden_channels);
  // Sizes a hostile config.json could make impossible: the largest activation (a level's pixels x its
  // width) and the codebook stay within what a host holds.
  double widest = 0;
  for (size_t i = 0; i < channel_mult.size(); ++i) {
    const double side = double(resolution >> i);
    widest = std::max(widest, side * side * double(hidden_channels * channel_mult[i]));
  }
  RW_REQUIRE(widest <= double(int64_t(1) << 31),
             "resolution: the activations of " << resolution << "x" << resolution << " frames at these widths hold "
                                               << widest << " values, past 2^31");
  RW_REQUIRE(double(num_embeddings) * double(quantized_embed_dim) <= double(int64_t(1) << 28),
             "num_embeddings: a codebook of " << num_embeddings << " x " << quantized_embed_dim << " is past 2^28 values");
  for (size_t i = 0; i < channel_mult.size(); ++i)
    RW_REQUIRE((hidden_channels * channel_mult[i]) % norm_groups == 0,
               "norm_groups: " << norm_groups << " does not divide level " << i << "'s "
                               << hidden_channels * channel_mult[i] << " channels");
  return Status::Ok();
}

Status ReadVqganConfig(const std::string& path, VqganConfig* out) {
  nlohmann::json j;
  RW_RETURN_IF_ERROR(ReadJsonFile(path, &j));
  RW_REQUIRE(j.is_object(), path << ": expected a JSON object");
  VqganConfig c;
  const std::string where = path + ": ";
  auto integer = [&](const char* key, int64_t* v) -> Status {
    if (!j.contains(key)) return Status::Ok();
    return JsonInteger(j[key], where + key, 0, int64_t(1) << 40, v);
  };
  try {
    for (const auto& [key, value] : j.items()) {
      static const std::set<std::string> known = {
          "resolution", "num_channels", "hidden_channels", "channel_mult", "num_res_blocks", "z_channels",
          "num_embeddings", "quantized_embed_dim", "attn_resolutions", "no_attn_mid_block", "dropout",
          "resample_with_conv", "commitment_cost", "num_resolutions", "norm_groups", "norm_eps", "model_type"};
      RW_REQUIRE(known.count(key), where << key << ": not a VQGAN setting this implementation knows");
    }
    for (const auto& [key, field] : {std::pair<const char*, int64_t*>{"resolution", &c.resolution},
                                     {"num_channels", &c.num_channels},
                                     {"hidden_channels", &c.hidden_channels},
                                     {"num_res_blocks", &c.num_res_blocks},
                                     {"z_channels", &c.z_channels},
                                     {"num_embeddings", &c.num_embeddings},
                                     {"quantized_embed_dim", &c.quantized_embed_dim},
                                     {"norm_groups", &c.norm_groups}})
      RW_RETURN_IF_ERROR(integer(key, field));
    if (j.contains("channel_mult")) {
      RW_REQUIRE(j["channel_mult"].is_array(), where << "channel_mult: expected a list of integers");
      c.channel_mult.clear();
      for (size_t i = 0; i < j["channel_mult"].size(); ++i) {
        int64_t m = 0;
        RW_RETURN_IF_ERROR(JsonInteger(j["channel_mult"][i], where + "channel_mult[" + std::to_string(i) + "]", 0, 1 << 20, &m));
        c.channel_mult.push_back(m);
      }
    }
    if (j.contains("num_resolutions")) {
      int64_t n = 0;
      RW_RETURN_IF_ERROR(JsonInteger(j["num_resolutions"], where + "num_resolutions", 0, 64, &n));
      RW_REQUIRE(n == c.levels(), where << "num_resolutions: " << n << ", but channel_mult has " << c.levels()
                                        << " levels");
    }
    if (j.contains("norm_eps")) {
      RW_REQUIRE(j["norm_eps"].is_number(), where << "norm_eps: expected a number");
      c.norm_eps = j["norm_eps"].get<float>();
    }
    if (j.contains("model_type"))
      RW_REQUIRE(j["model_type"] == "vqgan", where << "model_type: " << j["model_type"].dump() << " is not vqgan");
    // What LWM's class allows and its released VQGAN does not use (the architecture has no attention
    // blocks): outside what this model is, so refused by name rather than computed wrongly.
    if (j.contains("attn_resolutions"))
      RW_REQUIRE(j["attn_resolutions"].is_array() && j["attn_resolutions"].empty(),
                 where << "attn_resolutions: attention blocks are outside LWM's VQGAN architecture (it has none); refused");
    if (j.contains("no_attn_mid_block"))
      RW_REQUIRE(j["no_attn_mid_block"] == true,
                 where << "no_attn_mid_block: an attention middle block is outside LWM's VQGAN architecture (it has none); refused");
    if (j.contains("resample_with_conv"))
      RW_REQUIRE(j["resample_with_conv"] == true,
                 where << "resample_with_conv: only resampling with convolutions (LWM's) is implemented");
    if (j.contains("dropout"))  // inference: dropout is off whatever its rate
      RW_REQUIRE(j["dropout"].is_number() && j["dropout"].get<double>() >= 0 && j["dropout"].get<double>() < 1,
                 where << "dropout: expected a rate in [0, 1)");
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(where + e.what());
  }
  const Status st = c.Validate();
  RW_REQUIRE(st.ok(), where << st.message());
  *out = c;
  return Status::Ok();
}

std::string VqganConfigJson(const VqganConfig& c) {
  nlohmann::ordered_json j = {{"model_type", "vqgan"},
                              {"resolution", c.resolution},
                              {"num_channels", c.num_channels},
                              {"hidden_channels", c.hidden_channels},
                              {"channel_mult", c.channel_mult},
                              {"num_res_blocks", c.num_res_blocks},
                              {"attn_resolutions", nlohmann::json::array()},
                              {"no_attn_mid_block", true},
                              {"z_channels", c.z_channels},
                              {"num_embeddings", c.num_embeddings},
                              {"quantized_embed_dim", c.quantized_embed_dim},
                              {"resample_with_conv", true},
                              {"norm_groups", c.norm_groups},
                              {"norm_eps", c.norm_eps}};
  return j.dump(2) + "\n";
}

std::vector<std::pair<std::string, std::vector<int64_t>>> VqganTensors(const VqganConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  auto conv = [&](const std::string& name, int64_t k, int64_t cin, int64_t cout) {
    t.push_back({name + ".kernel", {k, k, cin, cout}});
    t.push_back({name + ".bias", {cout}});
  };
  auto norm = [&](const std::string& name, int64_t ch) {
    t.push_back({name + ".scale", {ch}});
    t.push_back({name + ".bias", {ch}});
  };
  auto resnet = [&](const std::string& name, int64_t cin, int64_t cout) {
    norm(name + ".GroupNorm_0", cin);
    conv(name + ".Conv_0", 3, cin, cout);
    norm(name + ".GroupNorm_1", cout);
    conv(name + ".Conv_1", 3, cout, cout);
    if (cin != cout) conv(name + ".Conv_2", 1, cin, cout);
  };
  const int64_t L = c.levels();
  int64_t ch = c.hidden_channels;
  conv("encoder.Conv_0", 3, c.num_channels, ch);
  for (int64_t i = 0; i < L; ++i) {
    const std::string block = "encoder.DownsamplingBlock_" + std::to_string(i);
    const int64_t out = c.hidden_channels * c.channel_mult[size_t(i)];
    for (int64_t r = 0; r < c.num_res_blocks; ++r, ch = out) resnet(block + ".ResnetBlock_" + std::to_string(r), ch, out);
    if (i != L - 1) conv(block + ".Downsample_0.Conv_0", 3, ch, ch);
  }
  resnet("encoder.MidBlock_0.ResnetBlock_0", ch, ch);
  resnet("encoder.MidBlock_0.ResnetBlock_1", ch, ch);
  norm("encoder.GroupNorm_0", ch);
  conv("encoder.Conv_1", 3, ch, c.z_channels);
  conv("quant_conv", 1, c.z_channels, c.quantized_embed_dim);
  t.push_back({"quantize.embeddings", {c.num_embeddings, c.quantized_embed_dim}});
  conv("post_quant_conv", 1, c.quantized_embed_dim, c.z_channels);
  ch = c.hidden_channels * c.channel_mult[size_t(L - 1)];
  conv("decoder.Conv_0", 3, c.z_channels, ch);
  resnet("decoder.MidBlock_0.ResnetBlock_0", ch, ch);
  resnet("decoder.MidBlock_0.ResnetBlock_1", ch, ch);
  for (int64_t u = 0; u < L; ++u) {  // Flax's creation order: UpsamplingBlock_0 is the deepest level
    const int64_t level = L - 1 - u;
    const std::string block = "decoder.UpsamplingBlock_" + std::to_string(u);
    const int64_t out = c.hidden_channels * c.channel_mult[size_t(level)];
    for (int64_t r = 0; r <= c.num_res_blocks; ++r, ch = out) resnet(block + ".ResnetBlock_" + std::to_string(r), ch, out);
    if (level != 0) conv(block + ".Upsample_0.Conv_0", 3, ch, ch);
  }
  norm("decoder.GroupNorm_0", ch);
  conv("decoder.Conv_1", 3, ch, c.num_channels);
  return t;
}

Status Vqgan::Make(const VqganConfig& c, std::map<std::string, std::vector<float>> tensors, kernels::Exec ex,
                   std::unique_ptr<Vqgan>* out) {
  RW_RETURN_IF_ERROR(c.Validate());
  std::set<std::string> expected;
  for (const auto& [name, shape] : VqganTensors(c)) {
    expected.insert(name);
    const auto it = tensors.find(name);
    RW_REQUIRE(it != tensors.end(), "vqgan: tensor " << name << " is missing");
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    RW_REQUIRE(int64_t(it->second.size()) == n, "vqgan: tensor " << name << " has " << it->second.size()
                                                                 << " elements, the config makes it " << n);
  }
  for (const auto& [name, data] : tensors)
    RW_REQUIRE(expected.count(name), "vqgan: tensor " << name << " is not part of LWM's VQGAN architecture (no attention "
                                                         "blocks or other extras); refusing to drop it");
  auto v = std::unique_ptr<Vqgan>(new Vqgan());
  v->c_ = c;
  v->w_ = std::move(tensors);
  v->ex_ = ex;
  *out = std::move(v);
  return Status::Ok();
}

Status Vqgan::Load(const std::string& dir, kernels::Exec ex, std::unique_ptr<Vqgan>* out) {
  VqganConfig c;
  RW_RETURN_IF_ERROR(ReadVqganConfig(dir + "/config.json", &c));
  std::map<std::string, TensorInfo> header;
  const std::string file = dir + "/model.safetensors";
  RW_RETURN_IF_ERROR(ReadSafetensorsHeader(file, &header));
  std::map<std::string, std::vector<float>> tensors;
  const auto want = VqganTensors(c);
  for (const auto& [name, shape] : want) {
    const auto it = header.find(name);
    RW_REQUIRE(it != header.end(), file << ": tensor " << name << " is missing");
    RW_REQUIRE(it->second.shape == shape, file << ": tensor " << name << " has the wrong shape for config.json");
    std::vector<float> data(it->second.numel);
    RW_RETURN_IF_ERROR(ReadTensorRange(file, name, it->second, 0, it->second.numel, data.data()));
    tensors[name] = std::move(data);
  }
  for (const auto& [name, info] : header)
    RW_REQUIRE(tensors.count(name), file << ": tensor " << name << " is not part of this VQGAN; refusing to drop it");
  return Make(c, std::move(tensors), ex, out);
}

struct Vqgan::Act {
  int64_t h = 0, w = 0, c = 0;
  std::vector<float> v;
};

const std::vector<float>& Vqgan::T(const std::string& name) const { return w_.at(name); }

Status Vqgan::Conv(const std::string& name, int64_t k, Act& x, int64_t cout) const {
  const kernels::Conv2dShape s = kernels::Conv2dShape::Same(1, x.h, x.w, x.c, cout, k);
  std::vector<float> y(size_t(x.h * x.w * cout));
  RW_RETURN_IF_ERROR(kernels::Conv2dForward(ex_, s, x.v.data(), T(name + ".kernel").data(), T(name + ".bias").data(),
                                            y.data()));
  x.v = std::move(y);
  x.c = cout;
  return Status::Ok();
}

Status Vqgan::Norm(const std::string& name, Act& x) const {
  return kernels::GroupNormForward(ex_, 1, x.h * x.w, x.c, c_.norm_groups, c_.norm_eps, x.v.data(),
                                   T(name + ".scale").data(), T(name + ".bias").data(), /*silu=*/true, x.v.data());
}

Status Vqgan::Resnet(const std::string& name, Act& x, int64_t cout) const {
  Act h = x;
  RW_RETURN_IF_ERROR(Norm(name + ".GroupNorm_0", h));
  RW_RETURN_IF_ERROR(Conv(name + ".Conv_0", 3, h, cout));
  RW_RETURN_IF_ERROR(Norm(name + ".GroupNorm_1", h));
  RW_RETURN_IF_ERROR(Conv(name + ".Conv_1", 3, h, cout));
  if (x.c != cout) RW_RETURN_IF_ERROR(Conv(name + ".Conv_2", 1, x, cout));
  RW_RETURN_IF_ERROR(kernels::AddInto(ex_, int64_t(h.v.size()), x.v.data(), h.v.data()));
  x = std::move(h);
  return Status::Ok();
}

Status Vqgan::Encode(int64_t frames, const float* pixels, std::vector<int32_t>* codes,
                     std::vector<float>* latents) const {
  RW_REQUIRE(frames >= 0, "vqgan: frames must be >= 0, got " << frames);
  RW_REQUIRE(frames == 0 || pixels, "vqgan: pixels: null pointer");
  const int64_t R = c_.resolution, L = c_.levels(), per = R * R * c_.num_channels, G = c_.codes_per_frame();
  codes->assign(size_t(frames * G), 0);
  if (latents) latents->assign(size_t(frames * G * c_.quantized_embed_dim), 0.f);
  for (int64_t f = 0; f < frames; ++f) {
    Act x{R, R, c_.num_channels, std::vector<float>(pixels + f * per, pixels + (f + 1) * per)};
    RW_RETURN_IF_ERROR(Conv("encoder.Conv_0", 3, x, c_.hidden_channels));
    for (int64_t i = 0; i < L; ++i) {
      const std::string block = "encoder.DownsamplingBlock_" + std::to_string(i);
      for (int64_t r = 0; r < c_.num_res_blocks; ++r)
        RW_RETURN_IF_ERROR(Resnet(block + ".ResnetBlock_" + std::to_string(r), x, c_.hidden_channels * c_.channel_mult[size_t(i)]));
      if (i == L - 1) continue;
      // LWM's downsampling: a row and a column of zeros at the bottom and right, then 3 x 3 at stride 2.
      kernels::Conv2dShape s;
      s.n = 1, s.h = x.h, s.w = x.w, s.cin = x.c, s.cout = x.c, s.stride = 2;
      s.pad_top = s.pad_left = 0, s.pad_bottom = s.pad_right = 1;
      std::vector<float> y(size_t(s.out_h() * s.out_w() * x.c));
      const std::string conv = block + ".Downsample_0.Conv_0";
      RW_RETURN_IF_ERROR(kernels::Conv2dForward(ex_, s, x.v.data(), T(conv + ".kernel").data(), T(conv + ".bias").data(),
                                                y.data()));
      x.h = s.out_h(), x.w = s.out_w(), x.v = std::move(y);
    }
    RW_RETURN_IF_ERROR(Resnet("encoder.MidBlock_0.ResnetBlock_0", x, x.c));
    RW_RETURN_IF_ERROR(Resnet("encoder.MidBlock_0.ResnetBlock_1", x, x.c));
    RW_RETURN_IF_ERROR(Norm("encoder.GroupNorm_0", x));
    RW_RETURN_IF_ERROR(Conv("encoder.Conv_1", 3, x, c_.z_channels));
    RW_RETURN_IF_ERROR(Conv("quant_conv", 1, x, c_.quantized_embed_dim));
    RW_REQUIRE(x.h * x.w == G, "vqgan: the encoder made a " << x.h << "x" << x.w << " grid, expected " << c_.grid());
    RW_RETURN_IF_ERROR(kernels::NearestCode(ex_, G, c_.quantized_embed_dim, c_.num_embeddings, x.v.data(),
                                            T("quantize.embeddings").data(), codes->data() + f * G));
    if (latents) std::copy(x.v.begin(), x.v.end(), latents->begin() + f * G * c_.quantized_embed_dim);
  }
  return Status::Ok();
}

Status Vqgan::Decode(int64_t frames, const int32_t* codes, std::vector<float>* pixels) const {
  RW_REQUIRE(frames >= 0, "vqgan: frames must be >= 0, got " << frames);
  RW_REQUIRE(frames == 0 || codes, "vqgan: codes: null pointer");
  const int64_t R = c_.resolution, L = c_.levels(), per = R * R * c_.num_channels, G = c_.codes_per_frame(),
                E = c_.quantized_embed_dim;
  for (int64_t i = 0; i < frames * G; ++i)
    RW_REQUIRE(codes[i] >= 0 && codes[i] < c_.num_embeddings,
               "vqgan: code " << i << " is " << codes[i] << ", outside the codebook of " << c_.num_embeddings);
  pixels->assign(size_t(frames * per), 0.f);
  const std::vector<float>& book = T("quantize.embeddings");
  for (int64_t f = 0; f < frames; ++f) {
    Act x{c_.grid(), c_.grid(), E, std::vector<float>(size_t(G * E))};
    for (int64_t p = 0; p < G; ++p)
      std::copy_n(book.begin() + int64_t(codes[f * G + p]) * E, E, x.v.begin() + p * E);
    RW_RETURN_IF_ERROR(Conv("post_quant_conv", 1, x, c_.z_channels));
    RW_RETURN_IF_ERROR(Conv("decoder.Conv_0", 3, x, c_.hidden_channels * c_.channel_mult[size_t(L - 1)]));
    RW_RETURN_IF_ERROR(Resnet("decoder.MidBlock_0.ResnetBlock_0", x, x.c));
    RW_RETURN_IF_ERROR(Resnet("decoder.MidBlock_0.ResnetBlock_1", x, x.c));
    for (int64_t u = 0; u < L; ++u) {
      const int64_t level = L - 1 - u;
      const std::string block = "decoder.UpsamplingBlock_" + std::to_string(u);
      for (int64_t r = 0; r <= c_.num_res_blocks; ++r)
        RW_RETURN_IF_ERROR(Resnet(block + ".ResnetBlock_" + std::to_string(r), x, c_.hidden_channels * c_.channel_mult[size_t(level)]));
      if (level == 0) continue;
      std::vector<float> up(size_t(4 * x.h * x.w * x.c));
      RW_RETURN_IF_ERROR(kernels::UpsampleNearest2x(ex_, 1, x.h, x.w, x.c, x.v.data(), up.data()));
      x.h *= 2, x.w *= 2, x.v = std::move(up);
      RW_RETURN_IF_ERROR(Conv(block + ".Upsample_0.Conv_0", 3, x, x.c));
    }
    RW_RETURN_IF_ERROR(Norm("decoder.GroupNorm_0", x));
    RW_RETURN_IF_ERROR(Conv("decoder.Conv_1", 3, x, c_.num_channels));
    RW_REQUIRE(x.h == R && x.w == R, "vqgan: the decoder made " << x.h << "x" << x.w << ", expected " << R);
    std::transform(x.v.begin(), x.v.end(), pixels->begin() + f * per, [](float v) { return std::clamp(v, -1.f, 1.f); });
  }
  return Status::Ok();
}

}  // namespace rw::runtime
