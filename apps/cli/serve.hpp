// loupe serve: the OpenAI-compatible HTTP server (serve.cpp).
#pragma once
#include <loupe/pipeline/pipeline.hpp>

#include <string>
#include <utility>
#include <vector>

#include "../common/args.hpp"

namespace loupe_cli {

// Serves until SIGINT / SIGTERM; returns the exit status. `loras`: --lora NAME=PATH (or PATH) with scales.
int serve(const Args& a, const std::vector<std::pair<std::string, float>>& loras, const loupe::DescribeOptions& describe,
          int threads);

}  // namespace loupe_cli
