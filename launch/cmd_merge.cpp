// `cskv merge`: the newest complete checkpoint step of a training run → one
// compressor.safetensors (HF Linear layout), optionally also the reference-format .ckpt files.
#include <iostream>
#include <optional>

#include "checkpoint/export_cskv.h"
#include "checkpoint/merge.h"
#include "common/error.h"
#include "common/output_dir.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "launch/subcommands.h"
#include "model/config.h"

namespace cskv::cli {

int run_merge(int argc, char** argv) {
  return guarded("merge", [&] {
    auto options = make_options(
        "merge",
        "Merge the newest complete checkpoint step of a training run (every job finished) into "
        "one compressor.safetensors: tensors model.layers.<l>.self_attn.{k,v}_proj_{a,b}.weight "
        "(a = [r, H], b = [D, r]) with the resolved config in __metadata__. A step whose rank "
        "files fail their checksum is skipped with a warning.");
    options.add_options("input")("ckpt-dir", "Checkpoint directory of `cskv train` (required)",
                                 cxxopts::value<std::string>())(
        "model",
        "HF model directory the factors were trained for (required with --export-cskv: the "
        "reference code's shapes and arguments come from its config.json)",
        cxxopts::value<std::string>());
    options.add_options("output")("out", "Merged compressor file (required)",
                                  cxxopts::value<std::string>())(
        "export-cskv",
        "Also write the reference implementation's <name>_k.ckpt and <name>_v.ckpt (lists over "
        "layers of (a.state_dict(), b.state_dict()), read by Python torch.load) into this "
        "directory",
        cxxopts::value<std::string>())(
        "name",
        "File-name prefix of the --export-cskv files (default: the reference code's own, "
        "density_k_<kd>_v_<vd>_quant_k_<kb>_v_<vb>_[asvd_][window_<w>_])",
        cxxopts::value<std::string>()->default_value(""));
    add_settings(options, overwrite_settings());
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const std::string ckpt_dir = required<std::string>(*r, "ckpt-dir");
    const std::string out = required<std::string>(*r, "out");
    const bool overwrite = (*r)["overwrite"].as<bool>();
    // The export directory is locked and its files checked before anything is written.
    std::optional<files::DirectoryLock> export_lock;
    std::optional<model::ModelConfig> model;
    if (r->count("export-cskv")) {
      CSKV_CHECK_USAGE(r->count("model"),
                       "--export-cskv needs --model (the model the factors were trained for: the "
                       "reference code's shapes and arguments come from its config.json)");
      model = model::load_config((*r)["model"].as<std::string>());
      const std::string dir = (*r)["export-cskv"].as<std::string>();
      export_lock.emplace(files::DirectoryLock::acquire(dir, "--export-cskv"));
      checkpoint::check_export_outputs(dir, (*r)["name"].as<std::string>(), overwrite);
    }
    const auto merged = checkpoint::merge_checkpoint(ckpt_dir, out, {}, overwrite);
    std::cout << "merged " << merged.jobs << " job(s) of step " << merged.step << " into " << out
              << std::endl;
    if (r->count("export-cskv")) {
      const auto files = checkpoint::export_for_reference(
          merged.factors, nlohmann::json::parse(merged.config_json), *model,
          (*r)["export-cskv"].as<std::string>(), (*r)["name"].as<std::string>(), overwrite);
      std::cout << "exported " << files.k_path << " and " << files.v_path
                << "\nreference code: " << files.reference_arguments << std::endl;
    }
    return kExitOk;
  });
}

}  // namespace cskv::cli
