// The command-line option parser of the CLIs (apps/common/args.hpp): numbers out of
// range, not finite or not numbers are clear errors, never an undefined conversion
// (found by the hardening review: `-s 1e30` was a UB double -> uint64 conversion).
#include "test_util.hpp"

#include "../apps/common/args.hpp"

using loupe_cli::Args;

namespace {
Args with(const char* flag, const char* value) {
  Args a;
  a.values[flag] = {value};
  return a;
}
}  // namespace

TEST_CASE("args: a seed is any integer from 0 to 2^64-1, exactly; anything else is an error naming the option") {
  CHECK(with("-s", "18446744073709551615").unsigned64({"-s"}, 42) == UINT64_MAX);
  CHECK(with("-s", "9007199254740993").unsigned64({"-s"}, 42) == 9007199254740993ull);  // 2^53 + 1: beyond a double
  CHECK(Args().unsigned64({"-s"}, 42) == 42);
  for (const char* bad : {"-1", "18446744073709551616", "1e30", "4.5", "nan", " 7", "0x10"})
    CHECK_THROWS_WITH_AS(with("-s", bad).unsigned64({"-s"}, 42), doctest::Contains("option -s: expected an integer from 0 to"),
                         loupe::Error);
}

TEST_CASE("args: integers and reals out of range or not finite are errors, not conversions") {
  CHECK(with("-n", "2147483647").integer({"-n"}, 1) == 2147483647);
  CHECK(with("-n", "-5").integer({"-n"}, 1) == -5);
  for (const char* bad : {"1e20", "-3000000000", "2.5"})
    CHECK_THROWS_WITH_AS(with("-n", bad).integer({"-n"}, 1), doctest::Contains("option -n: expected an integer"), loupe::Error);
  for (const char* bad : {"nan", "inf", "-inf", "x"})
    CHECK_THROWS_WITH_AS(with("--temp", bad).real({"--temp"}, 0.0f), doctest::Contains("is not a number"), loupe::Error);
  CHECK_THROWS_WITH_AS(with("--temp", "1e300").real({"--temp"}, 0.0f), doctest::Contains("out of range"), loupe::Error);
  CHECK(with("--temp", "0.7").real({"--temp"}, 0.0f) == 0.7f);
}

TEST_CASE("args: a value that starts with a non-ASCII byte after '-' is parsed, not passed to isdigit as a negative char") {
  std::string arg0 = "loupe", arg1 = "-\xc5\xbe";  // "-ž"
  char* argv[] = {arg0.data(), arg1.data()};
  CHECK_THROWS_WITH_AS(Args::parse(2, argv, 1, {}, {}), doctest::Contains("unknown option"), loupe::Error);
}
