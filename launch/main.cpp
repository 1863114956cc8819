// Entry point of the `cskv` executable: dispatches to one subcommand per file in launch/.
#include <cstring>
#include <iostream>

#include "comm/factory.h"
#include "common/version.h"
#include "launch/cli.h"
#include "launch/subcommands.h"

namespace cskv::cli {
const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> all = {
      {"toy-model", "Write a random HF-format Llama/Mistral/Qwen2 model with realistic spectra",
       run_toy_model},
      {"toy-tokens", "Write a structured synthetic token stream (calibration corpus for the demo)",
       run_toy_tokens},
      {"tokenize",
       "Tokenize a text corpus once (SentencePiece .model or tokenizer.json) into a token file",
       run_tokenize},
      {"inspect", "Print the summary of a HF model directory (config, tensors, bytes)",
       run_inspect},
      {"capture", "Capture calibration activations to HDF5 shards + Gram statistics (mpirun-able)",
       run_capture},
      {"train", "Train the low-rank K/V factors per layer (init + quantization-aware AdamW)",
       run_train},
      {"analyze", "K/V cache spectra per layer: energy ranks (90/95/99%) as CSV, markdown, PNG",
       run_analyze},
      {"merge", "Merge a checkpoint into compressor.safetensors (+ the reference .ckpt export)",
       run_merge},
      {"eval",
       "Evaluate a compressor: per-layer errors, KL/perplexity with the compressed cache, memory",
       run_eval},
      {"run",
       "The whole compression in one command: capture -> train -> merge -> eval, from a JSON job "
       "file (mpirun/srun-able, resumable)",
       run_run},
      {"comm-check",
       "Verify broadcast/allreduce/gather on the communicator and print bandwidth (mpirun-able)",
       run_comm_check},
  };
  return all;
}
}  // namespace cskv::cli

namespace {
void print_help() {
  std::cout << "cskv — channel-shrinking KV-cache compression (CSKV) for Llama/Mistral/Qwen2\n\n"
               "Usage: cskv <subcommand> [options]     (cskv <subcommand> --help for its flags)\n"
               "       cskv --version                  (cskv, LibTorch, CUDA and NCCL versions)\n\n"
               "Subcommands:\n";
  for (const auto& s : cskv::cli::subcommands()) {
    std::cout << "  " << s.name << std::string(14 - std::min<size_t>(13, s.name.size()), ' ')
              << s.summary << "\n";
  }
  std::cout
      << "\nExit status: 0 ok, 1 runtime error, 2 usage error, 75 stopped by a signal after a "
         "checkpoint (rerun to continue).\n";
}
}  // namespace

namespace {
int dispatch(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? cskv::cli::kExitUsage : cskv::cli::kExitOk;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::cout << cskv::version_text(cskv::comm::nccl_version()) << std::flush;
    return 0;
  }
  for (const auto& s : cskv::cli::subcommands()) {
    if (s.name == argv[1]) return s.run(argc - 1, argv + 1);
  }
  std::cerr << "cskv: usage error: unknown subcommand '" << argv[1] << "' (see 'cskv --help')"
            << std::endl;
  return cskv::cli::kExitUsage;
}
}  // namespace

// Subcommands turn their errors into one line (cli::guarded); this catches what escapes them.
int main(int argc, char** argv) {
  return cskv::cli::guarded("", [&] { return dispatch(argc, argv); });
}
