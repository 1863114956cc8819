// Precompiled header shared by every cskv target: the slow-to-parse LibTorch and library headers.
#pragma once
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
