// `cskv toy-tokens`: writes the toy calibration corpus, a Zipf-distributed Markov chain of token
// ids as a flat little-endian u16/u32 file.
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/output_dir.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/subcommands.h"
#include "model/toy_model.h"

namespace cskv::cli {

int run_toy_tokens(int argc, char** argv) {
  return guarded("toy-tokens", [&] {
    auto options = make_options(
        "toy-tokens",
        "Write a synthetic token stream with structure (first-order Markov chain with Zipf "
        "successor distributions) as flat little-endian integers. Same flags -> identical bytes.");
    options.add_options("tokens")("vocab", "Vocabulary size (ids are in [0, vocab))",
                                  cxxopts::value<int64_t>()->default_value("1024"))(
        "count", "Number of tokens", cxxopts::value<int64_t>()->default_value("1048576"))(
        "seed", "Random seed", cxxopts::value<uint64_t>()->default_value("0"))(
        "dtype", "Token width: u16|u32 (u16 needs vocab <= 65536)",
        cxxopts::value<std::string>()->default_value("u16"));
    options.add_options("output")("out", "Output file (required)", cxxopts::value<std::string>());
    add_settings(options, overwrite_settings());
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string out = required<std::string>(*r, "out");
    const std::string dtype_name = (*r)["dtype"].as<std::string>();
    CSKV_CHECK_USAGE(dtype_name == "u16" || dtype_name == "u32",
                     "--dtype: expected u16|u32, found '" << dtype_name << "'");
    const auto dtype = dtype_name == "u16" ? model::TokenDType::kU16 : model::TokenDType::kU32;
    const int64_t vocab = (*r)["vocab"].as<int64_t>();
    const int64_t count = (*r)["count"].as<int64_t>();
    CSKV_CHECK_USAGE(
        dtype == model::TokenDType::kU32 || vocab <= 65536,
        "--vocab " << vocab << " does not fit in u16 (at most 65536); use --dtype u32");
    std::error_code ec;
    if (!(*r)["overwrite"].as<bool>() &&
        std::filesystem::exists(std::filesystem::symlink_status(out, ec))) {
      files::refuse_foreign_file(out, "a flat token file carries no mark of who wrote it", "--out");
    }
    const auto tokens = model::toy_tokens(vocab, count, (*r)["seed"].as<uint64_t>());
    model::write_tokens(out, tokens, vocab, dtype);
    const uint32_t max_id = *std::max_element(tokens.begin(), tokens.end());
    std::cout << "tokens           " << tokens.size() << "\n"
              << "vocab            " << vocab << " (largest id " << max_id << ")\n"
              << "dtype            " << dtype_name << "\n"
              << "bytes            " << tokens.size() * (dtype_name == "u16" ? 2 : 4) << "\n"
              << "file             " << out << "\n"
              << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
