// stb_image alone, compiled with -fwrapv (CMakeLists.txt): the loupe::stb
// functions that loupe/vision/image.hpp decodes with.
#define LOUPE_STB_IMPLEMENTATION
#include <loupe/vision/image.hpp>
