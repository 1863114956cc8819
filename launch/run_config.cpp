// Job-file parsing for `cskv run`: flag lookup, type probing through cxxopts itself, and the
// resolved settings.
#include "launch/run_config.h"

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace cskv::cli {

namespace {

using json = nlohmann::json;

enum class Kind { kBool, kString, kDouble, kInt, kUnsigned };

std::string flag_of(const std::string& key) {
  std::string f = key;
  for (auto& c : f) c = c == '_' ? '-' : c;
  return f;
}

std::string key_of(const std::string& flag) {
  std::string k = flag;
  for (auto& c : k) c = c == '-' ? '_' : c;
  return k;
}

bool parses(const cxxopts::Options& options, const std::string& flag, const std::string& text) {
  const std::string arg = "--" + flag + "=" + text;
  const char* argv[] = {"probe", arg.c_str()};
  try {
    (void)const_cast<cxxopts::Options&>(options).parse(2, argv);
    return true;
  } catch (const cxxopts::exceptions::exception&) {
    return false;
  }
}

// The flags (long names) of every option, with their value kind, found by asking cxxopts which
// texts each accepts: a word → string; 0.5 → double; -1 → signed integer; else unsigned.
std::map<std::string, Kind> option_kinds(const cxxopts::Options& options) {
  std::map<std::string, Kind> kinds;
  for (const auto& group : options.groups()) {
    for (const auto& o : options.group_help(group).options) {
      if (o.l.empty()) continue;
      const std::string& flag = o.l.front();
      if (flag == "help" || flag == "config") continue;
      Kind k;
      if (o.is_boolean) {
        k = Kind::kBool;
      } else if (parses(options, flag, "word")) {
        k = Kind::kString;
      } else if (parses(options, flag, "0.5")) {
        k = Kind::kDouble;
      } else if (parses(options, flag, "-1")) {
        k = Kind::kInt;
      } else {
        k = Kind::kUnsigned;
      }
      kinds[flag] = k;
    }
  }
  return kinds;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kBool:
      return "true or false";
    case Kind::kString:
      return "a string";
    case Kind::kDouble:
      return "a number";
    case Kind::kInt:
      return "an integer";
    case Kind::kUnsigned:
      return "a non-negative integer";
  }
  return "?";
}

}  // namespace

std::vector<std::string> config_file_arguments(const cxxopts::Options& options,
                                               const std::string& path) {
  std::ifstream f(path);
  CSKV_CHECK_INPUT(f.good(), path << ": cannot read the job file");
  const json j = json::parse(f, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!j.is_discarded(), path << ": not valid JSON");
  CSKV_CHECK_INPUT(j.is_object(),
                   path << ": expected a JSON object of settings, found " << j.type_name());
  const auto kinds = option_kinds(options);
  std::vector<std::string> args;
  for (const auto& [key, value] : j.items()) {
    const auto it = kinds.find(flag_of(key));
    CSKV_CHECK_INPUT(it != kinds.end() && key == key_of(flag_of(key)),
                     path << ": unknown key \"" << key << "\" (the keys are the flags of 'cskv run "
                          << "--help' with '_' for '-')");
    const Kind kind = it->second;
    const bool ok = (kind == Kind::kBool && value.is_boolean()) ||
                    (kind == Kind::kString && value.is_string()) ||
                    (kind == Kind::kDouble && value.is_number()) ||
                    (kind == Kind::kInt && value.is_number_integer()) ||
                    (kind == Kind::kUnsigned && value.is_number_unsigned());
    CSKV_CHECK_INPUT(ok, path << ": \"" << key << "\" must be " << kind_name(kind) << ", found "
                              << value.dump());
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_boolean()) {
      text = value.get<bool>() ? "true" : "false";
    } else {
      text = value.dump();  // shortest round-trip form of the number
    }
    args.push_back("--" + it->first + "=" + text);
  }
  return args;
}

template <typename T>
T required_setting(const cxxopts::ParseResult& r, const std::string& flag) {
  if (!r.count(flag)) {
    throw Error(ErrorKind::kUsage, "missing required setting \"" + key_of(flag) + "\" (give --" +
                                       flag + ", or \"" + key_of(flag) +
                                       "\" in the --config file)");
  }
  return r[flag].as<T>();
}
template std::string required_setting<std::string>(const cxxopts::ParseResult&, const std::string&);

std::string resolved_settings_json(const cxxopts::Options& options, const cxxopts::ParseResult& r) {
  json j = json::object();
  for (const auto& [flag, kind] : option_kinds(options)) {
    if (!r.count(flag) && !r[flag].has_default()) continue;
    const std::string key = key_of(flag);
    switch (kind) {
      case Kind::kBool:
        j[key] = r[flag].as<bool>();
        break;
      case Kind::kString:
        j[key] = r[flag].as<std::string>();
        break;
      case Kind::kDouble:
        j[key] = r[flag].as<double>();
        break;
      case Kind::kInt:
        try {
          j[key] = r[flag].as<int64_t>();
        } catch (const std::exception&) {
          j[key] = r[flag].as<int>();
        }
        break;
      case Kind::kUnsigned:
        j[key] = r[flag].as<uint64_t>();
        break;
    }
  }
  return j.dump();
}

}  // namespace cskv::cli
