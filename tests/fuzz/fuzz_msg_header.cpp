// The transport's message header as it comes off the wire: ClassifyHeader on untrusted bytes, and on a
// header built from them and sealed (a peer that computes the CRC: the checks past it are reached). An
// accepted or dropped header must announce a size the receiver may allocate.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "runtime/transport.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rw::runtime;
  MsgTag expect;
  expect.job = 7, expect.epoch = 3, expect.step = 11, expect.layer = 2, expect.hop = 1;
  const uint64_t bytes = 4096;
  MsgHeader h;
  (void)ClassifyHeader(data, size, expect, bytes, &h);
  if (size >= sizeof(MsgHeader)) {
    MsgHeader built;
    std::memcpy(&built, data, sizeof(MsgHeader));
    built.magic = MsgHeader::kMagic;
    built.version = 1;
    built.Seal();
    const HeaderAction a = ClassifyHeader(&built, sizeof(built), expect, bytes, &h);
    if (a == HeaderAction::kAccept && (h.bytes != bytes || !(h.tag == expect))) __builtin_trap();
    if ((a == HeaderAction::kStale || a == HeaderAction::kRefuse) && h.bytes > (uint64_t(64) << 20)) __builtin_trap();
  }
  return 0;
}
