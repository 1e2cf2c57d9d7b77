#include <gtest/gtest.h>

#include <set>

#include "runtime/layout.h"

namespace rw::runtime {
namespace {

TEST(Layout, EveryGlobalIndexLivesOnExactlyOneRankAndLocateInvertsGlobal) {
  for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped})
    for (int R : {1, 2, 3, 4, 8}) {
      Layout lay;
      ASSERT_TRUE(Layout::Make(kind, 2 * R * 5, R, &lay).ok());
      std::set<int64_t> seen;
      for (int r = 0; r < R; ++r)
        for (int64_t i = 0; i < lay.shard_len(); ++i) {
          const int64_t g = lay.Global(r, i);
          ASSERT_TRUE(seen.insert(g).second) << LayoutName(kind) << " R=" << R << " g=" << g << " twice";
          const auto [rr, ii] = lay.Locate(g);
          ASSERT_EQ(rr, r);
          ASSERT_EQ(ii, i);
        }
      EXPECT_EQ(int64_t(seen.size()), lay.global_len());
    }
}

TEST(Layout, ZigzagRankHoldsChunksRAndTwoRMinusOneMinusR) {
  Layout lay;
  ASSERT_TRUE(Layout::Make(LayoutKind::kZigzag, 16, 4, &lay).ok());  // 8 chunks of 2
  EXPECT_EQ(lay.GlobalIndices(0), (std::vector<int64_t>{0, 1, 14, 15}));
  EXPECT_EQ(lay.GlobalIndices(1), (std::vector<int64_t>{2, 3, 12, 13}));
  EXPECT_EQ(lay.GlobalIndices(3), (std::vector<int64_t>{6, 7, 8, 9}));
  ASSERT_TRUE(Layout::Make(LayoutKind::kStriped, 8, 4, &lay).ok());
  EXPECT_EQ(lay.GlobalIndices(1), (std::vector<int64_t>{1, 5}));
}

TEST(Layout, LengthsThatDoNotSplitAreRejectedNamingSeqLen) {
  Layout lay;
  auto st = Layout::Make(LayoutKind::kContiguous, 10, 4, &lay);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("seq_len", 0), 0u) << st.message();
  st = Layout::Make(LayoutKind::kZigzag, 12, 4, &lay);  // 12 % 4 == 0 but not % 8
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("zigzag"), std::string::npos) << st.message();
  LayoutKind k;
  st = ParseLayout("spiral", &k);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("spiral"), std::string::npos);
}

}  // namespace
}  // namespace rw::runtime
