// `ringworld eval` and `ringworld data prepare`.
#include <cstdio>
#include <fstream>

#include "actors/device_actor.h"
#include "cli/train.h"
#include "runtime/dataset.h"

namespace rw::cli {

int Eval(const std::string& checkpoint, const std::string& data, int ring, const std::string& layout, int64_t seq_len) {
  if (ring < 1) {
    std::fprintf(stderr, "ringworld eval: --ring: must be >= 1, got %d\n", ring);
    return 2;
  }
  if (!std::ifstream(checkpoint + "/config.json").good()) {
    std::fprintf(stderr, "ringworld eval: --checkpoint: %s has no config.json\n", checkpoint.c_str());
    return 2;
  }
  if (!std::ifstream(data + "/meta.json").good()) {
    std::fprintf(stderr, "ringworld eval: --data: %s is not a prepared dataset (run ringworld data prepare)\n",
                 data.c_str());
    return 2;
  }
  struct Config : caf::actor_system_config {
    Config() { actors::AddMessageTypes(*this); }
  } cfg;
  caf::actor_system sys{cfg};
  std::vector<actors::device_actor> devices;
  for (int r = 0; r < ring; ++r) devices.push_back(actors::SpawnDevice(sys, r));
  auto st = actors::FormRing(sys, devices, /*job=*/2, /*epoch=*/1, "inproc");
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld eval: %s\n", st.message().c_str());
    return 1;
  }
  caf::scoped_actor self{sys};
  for (auto& d : devices) self->send(d, actors::eval_atom::value, actors::eval_task{1, checkpoint, data, seq_len, layout});
  actors::eval_report result;
  std::string error;
  for (int r = 0; r < ring; ++r)
    self->receive([&](const actors::eval_report& rep) {
      if (!rep.ok && error.empty()) {
        error = rep.error;
        for (auto& d : devices) self->send(d, actors::abort_atom::value, std::string("eval failed"));
      }
      if (rep.ok) result = rep;
    });
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld eval: %s\n", error.c_str());
    return 1;
  }
  std::printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %lld}\n", result.loss, result.perplexity,
              (long long)result.tokens);
  return 0;
}

int DataPrepare(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer,
                bool skip_bad) {
  runtime::PrepareOptions opt{inputs, output, tokenizer, skip_bad};
  runtime::PrepareReport rep;
  auto st = runtime::PrepareDataset(opt, &rep);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld data prepare: %s\n", st.message().c_str());
    return 2;
  }
  std::printf("{\"documents\": %lld, \"tokens\": %lld, \"skipped\": %lld, \"output\": \"%s\"}\n",
              (long long)rep.documents, (long long)rep.tokens, (long long)rep.skipped, output.c_str());
  return 0;
}

}  // namespace rw::cli
