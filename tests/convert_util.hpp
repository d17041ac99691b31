// Converting the test models: a Hugging Face text model to OUT/NAME.gguf.
#pragma once
#include <loupe/convert/convert.hpp>

#include <filesystem>
#include <string>

namespace loupe_test {

inline std::string convert_text(const std::filesystem::path& src, const std::filesystem::path& out, loupe::DType type,
                                const std::string& name) {
  loupe::ConvertOptions o;
  o.outtype = type;
  o.name = name;
  return loupe::convert_model(src.string(), out.string(), o).text_path;
}

}  // namespace loupe_test
