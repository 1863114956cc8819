// A tiny SentencePiece model for the tests that tokenize text: a corpus of pseudo-random words
// and a 40-piece BPE model trained on it. Header-only, beside the other test support.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "data/sentencepiece.h"

namespace cskv::test {

// Writes `lines` lines of eight words drawn from an 8-word list by a seeded LCG to `path`; with
// doc_every > 0, a document break precedes every doc_every-th line (alternately "\n" and the
// whitespace-only "  \n\n", so both kinds of blank line appear).
inline void write_word_corpus(const std::string& path, uint32_t seed, int lines,
                              int doc_every = 0) {
  std::ofstream out(path);
  const char* words[] = {"alpha", "beta", "gamma", "delta", "cache", "key", "value", "layer"};
  uint32_t s = seed;
  for (int line = 0; line < lines; ++line) {
    if (doc_every > 0 && line % doc_every == 0) {
      out << (line % (2 * doc_every) == 0 ? "\n" : "  \n\n");
    }
    for (int w = 0; w < 8; ++w) {
      s = s * 1103515245u + 12345u;
      out << (w ? " " : "") << words[(s >> 16) % 8];
    }
    out << "\n";
  }
}

// Trains a 40-piece BPE model (unk 0, bos 1, eos 2) on `corpus`; returns <prefix>.model.
inline std::string train_word_sentencepiece(const std::string& corpus, const std::string& prefix) {
  data::train_sentencepiece("--input=" + corpus + " --model_prefix=" + prefix +
                            " --vocab_size=40 --model_type=bpe --bos_id=1 --eos_id=2 --unk_id=0 "
                            "--minloglevel=2 --num_threads=1");
  return prefix + ".model";
}

}  // namespace cskv::test
