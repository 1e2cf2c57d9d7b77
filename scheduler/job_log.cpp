#include "scheduler/job_log.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>

namespace rw::scheduler {

void JobLog::Log(const std::string& job, const std::string& line) {
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char ts[32];
  std::tm utc{};
  std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &utc));
  std::lock_guard<std::mutex> lock(mu_);
  std::ofstream f(Path(job), std::ios::app);
  f << ts << " " << line << "\n";
}

void JobLog::Note(const std::string& job, const std::string& message, const storage::Batch& extra) {
  const Status st = jobs_->Update(job, [](JobRecord&) {}, message, extra);
  if (!st.ok()) std::fprintf(stderr, "ringworld daemon: %s: event not recorded: %s\n", job.c_str(), st.message().c_str());
  Log(job, message);
}

std::string JobLog::Read(const std::string& job, long long offset, long long max_bytes, long long* next) const {
  std::ifstream f(Path(job), std::ios::binary);
  std::string text;
  *next = 0;
  if (!f) return text;
  f.seekg(0, std::ios::end);
  const long long size = f.tellg();
  const long long from = std::clamp<long long>(offset, 0, size);
  f.seekg(from);
  text.resize(size_t(std::min<long long>(size - from, max_bytes)));
  f.read(text.data(), std::streamsize(text.size()));
  *next = from + (long long)text.size();
  return text;
}

}  // namespace rw::scheduler
