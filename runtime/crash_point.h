// Named crash points: places in the durable paths (the checkpoint commit, the job table's writes) where a
// test may have the process killed, as by `kill -9`, to show that what survives is consistent. Compiled in
// and inert: a point costs one getenv unless RINGWORLD_CRASH_AT names it.
//
//   RINGWORLD_CRASH_AT=checkpoint.manifest_written      SIGKILL the first time that point is reached
//   RINGWORLD_CRASH_AT=jobs.transition.after_write:3    ... the third time
//
// Every point is declared once in kCrashPoints (crash_point.cpp) with what has happened when it fires;
// RW_CRASH_POINT with a name not declared there aborts, so the table the tests sweep is the whole list.
#pragma once

#include <string>
#include <vector>

namespace rw::runtime {

struct CrashPointInfo {
  const char* name;
  const char* after;  // what is done when the process dies there
};

// Every declared point, in the order their paths reach them.
const std::vector<CrashPointInfo>& CrashPoints();

// Dies by SIGKILL if RINGWORLD_CRASH_AT names this point (and this is its n-th reach).
void CrashPoint(const char* name);

}  // namespace rw::runtime

#define RW_CRASH_POINT(name) ::rw::runtime::CrashPoint(name)
