// The value types of settings (pipeline/settings.h), in a header of their own so that torch-free
// code — the job-file parser and its fuzzer — can name them.
#pragma once

namespace cskv::pipeline {

enum class SettingType { kBool, kString, kDouble, kInt, kInt64, kUint64 };

}  // namespace cskv::pipeline
