// Precompiled header shared by every cskv target: the slow-to-parse LibTorch and library headers.
#pragma once
#include <ATen/ATen.h>
#include <torch/types.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
