// The implementation half of the header-only library, compiled once for the
// loupe::loupe target: the kernels, Eigen, stb_image, the model code and the
// pipeline. Consumers include the headers and link this; their translation
// units then compile in a second or two (bench/README.md: build cost).
#define LOUPE_IMPLEMENTATION
#include <loupe/loupe.hpp>
