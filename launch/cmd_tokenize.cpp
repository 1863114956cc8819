// `cskv tokenize`: tokenizes a text corpus once with a SentencePiece .model or a Hugging Face
// tokenizer.json and writes the ids as a flat little-endian u16/u32 token file (capture --tokens).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/output_dir.h"
#include "common/progress.h"
#include "data/token_source.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/subcommands.h"
#include "model/toy_model.h"

namespace cskv::cli {
namespace {

// The largest id, refused when u16 cannot hold it (named with its position).
uint32_t check_width(const std::vector<uint32_t>& ids, data::TokenDtype dtype) {
  uint32_t max_id = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    CSKV_CHECK_USAGE(dtype == data::TokenDtype::kU32 || ids[i] <= 0xFFFF,
                     "--token-dtype u16: token id " << ids[i] << " at position " << i
                                                    << " does not fit (at most 65535); use "
                                                       "--token-dtype u32");
    max_id = std::max(max_id, ids[i]);
  }
  return max_id;
}

cxxopts::Options tokenize_options() {
  auto options = make_options(
      "tokenize",
      "Tokenize a UTF-8 text file once, document by document (as HF's tokenizer(text) does for "
      "each), and write the ids as a flat little-endian token file for `cskv capture --tokens`.");
  options.add_options("input")(
      "tokenizer", "A SentencePiece tokenizer.model or a Hugging Face tokenizer.json (required)",
      cxxopts::value<std::string>())("text", "UTF-8 text file (required)",
                                     cxxopts::value<std::string>())(
      "add-special-tokens",
      "Apply the tokenizer's BOS (SentencePiece) or post-processor template (tokenizer.json)",
      cxxopts::value<bool>()->default_value("true"));
  options.add_options("output")("out", "Output token file (required)",
                                cxxopts::value<std::string>())(
      "token-dtype", "Width of the ids: u16|u32 (an id above 65535 is refused with u16)",
      cxxopts::value<std::string>()->default_value("u16"));
  // --text-docs as capture declares it (one declaration for both).
  const auto& capture = capture_settings();
  const auto docs = std::find_if(capture.begin(), capture.end(),
                                 [](const Setting& s) { return s.flag == "text-docs"; });
  CSKV_CHECK(docs != capture.end(), "the capture settings lack --text-docs");
  add_settings(options, {*docs});
  add_settings(options, overwrite_settings());
  return options;
}

}  // namespace

int run_tokenize(int argc, char** argv) {
  return guarded("tokenize", [&] {
    auto options = tokenize_options();
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string tokenizer = required<std::string>(*r, "tokenizer");
    const std::string text = required<std::string>(*r, "text");
    const std::string out = required<std::string>(*r, "out");
    const std::string dtype_name = (*r)["token-dtype"].as<std::string>();
    const data::TokenDtype dtype = data::parse_token_dtype(dtype_name);
    const data::TextDocs docs = data::parse_text_docs((*r)["text-docs"].as<std::string>());
    std::error_code ec;
    if (!(*r)["overwrite"].as<bool>() &&
        std::filesystem::exists(std::filesystem::symlink_status(out, ec))) {
      files::refuse_foreign_file(out, "a flat token file carries no mark of who wrote it", "--out");
    }
    data::tokenizer_kind(tokenizer);  // refuse a file that is no tokenizer before reading text

    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<ProgressMeter> meter;
    const auto ids =
        data::tokenize_text_file(text, tokenizer, (*r)["add-special-tokens"].as<bool>(), docs,
                                 [&](size_t done, size_t total) {
                                   if (!meter) {
                                     meter = std::make_unique<ProgressMeter>(
                                         "tokenize", "bytes", static_cast<int64_t>(total), true);
                                   }
                                   meter->update(static_cast<int64_t>(done));
                                 });
    if (meter) meter->finish();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const uint32_t max_id = check_width(ids, dtype);
    model::write_tokens(
        out, ids, int64_t{max_id} + 1,
        dtype == data::TokenDtype::kU16 ? model::TokenDType::kU16 : model::TokenDType::kU32);
    std::cout << "tokens           " << ids.size() << " (largest id " << max_id << ")\n"
              << "text-docs        " << data::text_docs_name(docs) << "\n"
              << "dtype            " << dtype_name << "\n"
              << "seconds          " << seconds << "\n"
              << "file             " << out << "\n"
              << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
