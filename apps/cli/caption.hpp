// loupe caption: captions for image collections (caption.cpp).
#pragma once
#include <loupe/pipeline/pipeline.hpp>

#include <string>
#include <utility>
#include <vector>

#include "../common/args.hpp"

namespace loupe_cli {

// Runs the whole slice; returns the exit status. `loras`: --lora PATH with scales (all active for every image).
int caption(const Args& a, const std::vector<std::pair<std::string, float>>& loras, const loupe::DescribeOptions& describe,
            int threads);

}  // namespace loupe_cli
