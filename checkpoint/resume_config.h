// Resume guard: a checkpoint directory may only be continued by a run with the same resolved
// config; otherwise the error lists every setting that differs.
#pragma once

#include <string>
#include <vector>

namespace cskv::checkpoint {

// The keys whose values differ between two JSON objects, as "key: old -> new" in key order;
// nested objects are compared per key ("a.b"), a key missing on one side shows as "(absent)",
// strings print without quotes, other values as compact JSON.
std::vector<std::string> config_differences(const std::string& saved_json,
                                            const std::string& current_json);

// Input error unless the configs are equal, e.g. "ckpt/ holds a run with other settings
// (k_density: 0.5 -> 0.25; seed: 0 -> 1); use another --ckpt-dir". Input error naming the
// directory when either is not a JSON object.
void check_resume_config(const std::string& saved_json, const std::string& current_json,
                         const std::string& ckpt_dir);

}  // namespace cskv::checkpoint
