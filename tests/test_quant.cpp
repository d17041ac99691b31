#include "test_util.hpp"
#include <loupe/tensor.hpp>
TEST_CASE("placeholder") { CHECK(loupe::f32_to_fp16(1.0f) == 0x3c00); }
