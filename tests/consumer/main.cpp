// Includes the whole engine and exercises a little of it: a consumer build check.
#include <loupe/convert/convert.hpp>
#include <loupe/pipeline/pipeline.hpp>

#include <cmath>
#include <cstdio>

int main() {
  loupe::Tensor x(loupe::DType::F32, {2, 64});
  for (int i = 0; i < 128; ++i) x.f32()[i] = float(i % 17) - 8.0f;
  loupe::Tensor q = loupe::convert(x.view(), loupe::DType::Q8_0);
  loupe::Tensor back = loupe::to_f32(q.view());
  std::printf("consumer ok: %zu bytes, x[5] = %g -> %g\n", q.bytes.size(), double(x.f32()[5]), double(back.f32()[5]));
  return std::abs(back.f32()[5] - x.f32()[5]) < 0.05f ? 0 : 1;  // Q8_0 step is 8/127
}
