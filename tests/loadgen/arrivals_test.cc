// The open loop's seeded gamma gaps: mean 1/rate whatever the burstiness, spread set by it.
#include "loadgen/arrivals.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

namespace pdserve::loadgen {
namespace {

struct GapStats {
  double mean = 0;
  double cv = 0;  // standard deviation / mean
};

GapStats Draw(double rate, double burstiness, uint64_t seed, int n) {
  ArrivalGaps gaps(rate, burstiness, seed);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& g : v) g = gaps.NextSeconds();
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / n;
  double var = 0;
  for (double g : v) var += (g - mean) * (g - mean);
  return {mean, std::sqrt(var / n) / mean};
}

TEST(LoadgenArrivalsTest, PoissonGapsAverageOneOverRate) {
  const GapStats s = Draw(/*rate=*/4, /*burstiness=*/1, /*seed=*/7, 100000);
  EXPECT_NEAR(s.mean, 0.25, 0.25 * 0.02);
  EXPECT_NEAR(s.cv, 1.0, 0.03);  // exponential: the deviation equals the mean
}

TEST(LoadgenArrivalsTest, BurstinessKeepsTheMeanAndSetsTheSpread) {
  // Gamma of shape B: coefficient of variation 1/sqrt(B).
  const GapStats bursty = Draw(10, 0.25, 11, 100000);
  EXPECT_NEAR(bursty.mean, 0.1, 0.1 * 0.03);
  EXPECT_NEAR(bursty.cv, 2.0, 0.1);
  const GapStats regular = Draw(10, 4, 11, 100000);
  EXPECT_NEAR(regular.mean, 0.1, 0.1 * 0.02);
  EXPECT_NEAR(regular.cv, 0.5, 0.02);
}

TEST(LoadgenArrivalsTest, SameSeedSameOffsets) {
  const std::vector<double> a = ArrivalOffsets(50, 3, 1, 42);
  EXPECT_EQ(a, ArrivalOffsets(50, 3, 1, 42));
  EXPECT_NE(a, ArrivalOffsets(50, 3, 1, 43));
  ASSERT_EQ(a.size(), 50u);
  EXPECT_EQ(a.front(), 0);
  for (size_t i = 1; i < a.size(); ++i) EXPECT_GE(a[i], a[i - 1]);
}

TEST(LoadgenArrivalsTest, InfiniteRateStartsEverythingAtOnce) {
  for (double at : ArrivalOffsets(10, INFINITY, 1, 0)) EXPECT_EQ(at, 0);
}

}  // namespace
}  // namespace pdserve::loadgen
