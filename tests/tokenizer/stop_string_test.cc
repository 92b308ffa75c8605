// StopStringMatcher: stop strings across delta boundaries, several stop strings, a stop at the
// very start, and no false stops or lost text.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/stop_strings.h"

namespace pdserve {
namespace {

// Feeds `deltas`; returns everything emitted (plus Finish when not stopped) and the stop string.
struct Outcome {
  std::string text;
  std::string stop;
};
Outcome Feed(std::vector<std::string> stops, const std::vector<std::string>& deltas) {
  StopStringMatcher matcher(std::move(stops));
  Outcome out;
  for (const std::string& d : deltas) {
    StopStringMatcher::Result r = matcher.Push(d);
    out.text += r.text;
    if (r.stopped) {
      out.stop = r.stop_string;
      EXPECT_TRUE(matcher.stopped());
      EXPECT_EQ(matcher.Push("more").text, "");  // nothing after a stop
      EXPECT_EQ(matcher.Finish(), "");
      return out;
    }
  }
  out.text += matcher.Finish();
  return out;
}

TEST(StopStringTest, StopStringSpanningDeltasIsCutWithEverythingAfter) {
  const Outcome out = Feed({"STOP"}, {"Hel", "lo S", "TO", "P and more", "never"});
  EXPECT_EQ(out.text, "Hello ");
  EXPECT_EQ(out.stop, "STOP");
}

TEST(StopStringTest, HoldsBackOnlyWhatCouldStartAStopString) {
  StopStringMatcher matcher({"</answer>"});
  EXPECT_EQ(matcher.Push("the answer is 4<").text, "the answer is 4");
  EXPECT_EQ(matcher.Push("/ans").text, "");
  EXPECT_EQ(matcher.Push("wer!").text, "</answer!");  // not a stop after all: released whole
  EXPECT_FALSE(matcher.stopped());
  EXPECT_EQ(matcher.Finish(), "");
}

TEST(StopStringTest, EarliestOfSeveralStopStringsWins) {
  Outcome out = Feed({"world", "lo w", "xyz"}, {"hello", " world"});
  EXPECT_EQ(out.text, "hel");
  EXPECT_EQ(out.stop, "lo w");
  // Two starting at the same place: the longer one is reported (the cut is the same).
  out = Feed({"ab", "abc"}, {"xxabcd"});
  EXPECT_EQ(out.text, "xx");
  EXPECT_EQ(out.stop, "abc");
}

TEST(StopStringTest, StopAtTheVeryStart) {
  const Outcome out = Feed({"<|end|>"}, {"<|e", "nd|>tail"});
  EXPECT_EQ(out.text, "");
  EXPECT_EQ(out.stop, "<|end|>");
}

TEST(StopStringTest, NoFalseStopAndNoLostText) {
  // Near misses and overlapping prefixes: "aab" must be found in "aaab", and "STAR" / "STOO" are
  // not "STOP".
  Outcome out = Feed({"STOP"}, {"ST", "AR", "T STO", "O", " ST"});
  EXPECT_EQ(out.text, "START STOO ST");
  EXPECT_EQ(out.stop, "");
  out = Feed({"aab"}, {"a", "a", "a", "b", "c"});
  EXPECT_EQ(out.text, "a");
  EXPECT_EQ(out.stop, "aab");
}

TEST(StopStringTest, MultiByteStopStringsKeepDeltasValidUtf8) {
  StopStringMatcher matcher({"。終"});
  EXPECT_EQ(matcher.Push("東京。").text, "東京");  // "。" could begin the stop string
  const StopStringMatcher::Result r = matcher.Push("終わり");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
}

TEST(StopStringTest, NoStopStringsPassEverythingThrough) {
  StopStringMatcher matcher({"", ""});  // empty ones are ignored
  EXPECT_EQ(matcher.Push("abc").text, "abc");
  EXPECT_EQ(matcher.Push("").text, "");
  EXPECT_EQ(matcher.Finish(), "");
}

}  // namespace
}  // namespace pdserve
