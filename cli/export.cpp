// `ringworld export --checkpoint DIR --to HF_DIR`: a checkpoint of ours (whole or sharded over a mesh) as a
// plain Hugging Face directory (runtime/hf_export.h).
#include <cstdio>

#include "cli/commands.h"
#include "runtime/hf_export.h"
#include "runtime/memory_plan.h"

namespace rw::cli {

int Export(const std::string& checkpoint, const std::string& to, const std::string& dtype,
           const std::string& max_shard_size) {
  using namespace rw::runtime;
  ExportOptions opt;
  if (!ParseExportDType(dtype, &opt.dtype)) {
    std::fprintf(stderr, "ringworld export: --dtype: '%s' is not float32, bfloat16 or float16\n", dtype.c_str());
    return 2;
  }
  if (!ParseByteSize(max_shard_size, &opt.max_shard_bytes) || opt.max_shard_bytes <= 0) {
    std::fprintf(stderr, "ringworld export: --max-shard-size: '%s' is not a size (e.g. 5GB, 2GiB, 500MB)\n",
                 max_shard_size.c_str());
    return 2;
  }
  ExportResult res;
  const Status st = ExportHuggingFace(checkpoint, to, opt, &res);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld export: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("exported %s -> %s: %lld tensors, %lld parameters in %s, %zu file%s (%.1f MB)\n", res.source.c_str(),
              to.c_str(), (long long)res.tensors, (long long)res.parameters, dtype.c_str(), res.files.size(),
              res.files.size() == 1 ? "" : "s", double(res.bytes) / 1e6);
  return 0;
}

}  // namespace rw::cli
