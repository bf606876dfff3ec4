// Streaming (attention sinks + local window) estimator.
#include <string>

#include "spattn/estimators/streaming.hpp"
#include "test_helpers.hpp"

TEST(Streaming, KeepsSinkAndLocalBlocks) {
  spattn::AttnArgs a;
  a.shape.Nq = 1000; a.shape.Nk = 1000; a.causal = true;
  spattn::StreamingParams prm;
  prm.block_size = 100; prm.sink_tokens = 50; prm.local_tokens = 150;
  const auto m = spattn::estimate_streaming(a, prm);
  // Row block 5 (rows 500..599) sees keys [351, 599]: blocks 3, 4, 5, plus sink block 0.
  std::vector<int> got;
  for (int c = 0; c < m.nkb; ++c) if (m.blocks[5 * m.nkb + c]) got.push_back(c);
  EXPECT_EQ(got, (std::vector<int>{0, 3, 4, 5}));
}


TEST(Streaming, ParamsValidateNamesTheField) {
  spattn::StreamingParams prm;
  prm.sink_tokens = -1;
  try {
    prm.validate();
    FAIL() << "negative sink_tokens accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("sink_tokens"), std::string::npos) << e.what();
  }
}
