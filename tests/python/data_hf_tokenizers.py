"""The independent reference of tests/data/hf_tokenizer_test.cpp: builds small BPE tokenizers with
the `tokenizers` package in the pipeline configurations of Llama-3, Qwen2 and Mistral (legacy
Prepend/Replace normalizer and Metaspace pre-tokenizer), trained on the test's texts, saves each
as OUT/<name>.json and writes OUT/expected.json: {name: [ids of Tokenizer.encode(text) per text]}.
bench/bench_tokenizer uses --train-bench (a Llama-3-style tokenizer trained on TEXT) and --bench
(tokenizers' single-threaded encode of TEXT's documents; run with RAYON_NUM_THREADS=1).
tests/launch/llama3_run_test.cpp uses --train-llama3: the llama3 configuration below trained on
TEXT's documents, saved as OUT_JSON; prints {"vocab": ids in use, "bos": id, "eos": id, "count":
ids of TEXT as HF's tokenizer(TEXT) gives them, "tail": the last TAIL of those ids}.

usage: data_hf_tokenizers.py TEXTS_JSON OUT_DIR
       data_hf_tokenizers.py --train-bench TEXT_FILE OUT_JSON VOCAB_SIZE
       data_hf_tokenizers.py --train-llama3 TEXT_FILE OUT_JSON VOCAB_SIZE TAIL
       data_hf_tokenizers.py --bench TOKENIZER_JSON TEXT_FILE
"""
import json
import os
import sys
import time

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level_bpe(texts, pattern, specials, vocab_size, extra_vocab=(), **bpe_args):
    """A byte-level BPE trained on texts, rebuilt with bpe_args (ignore_merges) and extra
    vocabulary entries that no merge produces (so ignore_merges is visible in the ids)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    for piece in extra_vocab:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    rebuilt = Tokenizer(models.BPE(vocab, merges, **bpe_args))
    rebuilt.pre_tokenizer = tok.pre_tokenizer
    rebuilt.decoder = decoders.ByteLevel()
    return rebuilt


def llama3(texts, vocab_size=700):
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    # "Ġuncopyrightable" is a vocabulary entry no merge reaches: only ignore_merges finds it.
    tok = byte_level_bpe(texts, LLAMA3_PATTERN, [bos, eos, "<|eot_id|>"], vocab_size,
                         extra_vocab=["\u0120uncopyrightable"], ignore_merges=True)
    tok.add_special_tokens([bos, eos, "<|eot_id|>"])
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False, lstrip=True,
                               rstrip=True)])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok


def qwen2(texts):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_bpe(texts, QWEN2_PATTERN, specials, 700, ignore_merges=False)
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens(specials)
    tok.add_tokens([AddedToken("caf\u00e9 noir", special=False, normalized=True)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def sentencepiece_style_bpe(texts, normalizer, pre_tokenizer):
    """Mistral's BPE: <unk> <s> </s>, then the 256 <0xXX> byte tokens, then merges trained on
    the texts with a small alphabet, so rare characters (emoji, CJK) take the byte fallback."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=500, show_progress=False, limit_alphabet=60))
    model = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    rebuilt = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True,
                                   byte_fallback=True))
    rebuilt.normalizer = normalizer
    rebuilt.pre_tokenizer = pre_tokenizer
    rebuilt.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<unk>", "<s>", "</s>")])
    rebuilt.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return rebuilt


def mistral_legacy(texts):
    return sentencepiece_style_bpe(
        texts, normalizers.Sequence([normalizers.Prepend("\u2581"),
                                     normalizers.Replace(" ", "\u2581")]), None)


def mistral_metaspace(texts):
    return sentencepiece_style_bpe(
        texts, None, pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                              split=False))


def digits_gpt2(texts):
    """Digits and ByteLevel with its own GPT-2 regex and a prefix space (older byte-level BPEs)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def split_behaviors(texts):
    """Every Split behavior, invert, Digits, and a Replace regex normalizer."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s{3,}"), "  "),
                                           normalizers.NFC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[,.!?]"), behavior="merged_with_next"),
        pre_tokenizers.Split(" ", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"\t"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\p{Han}+"), behavior="isolated", invert=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


BUILDERS = {"llama3": llama3, "qwen2": qwen2, "mistral_legacy": mistral_legacy,
            "mistral_metaspace": mistral_metaspace, "digits_gpt2": digits_gpt2,
            "split_behaviors": split_behaviors}


def build_all(texts_json, out_dir):
    with open(texts_json, encoding="utf-8") as f:
        texts = json.load(f)
    training = [t for t in texts if t] * 3
    expected = {}
    for name, build in BUILDERS.items():
        tok = build(training)
        tok.save(os.path.join(out_dir, name + ".json"))
        expected[name] = [tok.encode(t).ids for t in texts]
    with open(os.path.join(out_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f)


def train_bench_tokenizer(text_file, out_json, vocab_size):
    """The Llama-3 configuration trained on the first 4 MB of text_file (bench/)."""
    with open(text_file, encoding="utf-8") as f:
        text = f.read(4 << 20)
    tok = byte_level_bpe(text.split("\n\n"), LLAMA3_PATTERN, ["<|begin_of_text|>"], vocab_size,
                         ignore_merges=True)
    tok.add_special_tokens(["<|begin_of_text|>"])
    tok.save(out_json)


def blank_line_documents(text):
    docs, lines = [], []
    for line in text.split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip(" \t\r\v\f"):
            lines.append(line)
        elif lines:
            docs.append("\n".join(lines))
            lines = []
    if lines:
        docs.append("\n".join(lines))
    return docs


def train_llama3(text_file, out_json, vocab_size, tail):
    """The llama3 configuration trained on text_file's documents (blank-line separated)."""
    with open(text_file, encoding="utf-8") as f:
        text = f.read()
    tok = llama3(text.split("\n\n"), vocab_size)
    tok.save(out_json)
    # cskv's --text-docs blank-lines: documents are the runs of non-blank lines (a "\r" before
    # "\n" dropped), joined by "\n"; each encoded on its own (the template's BOS first).
    ids = [i for doc in blank_line_documents(text) for i in tok.encode(doc).ids]
    print(json.dumps({"vocab": tok.get_vocab_size(with_added_tokens=True),
                      "bos": tok.token_to_id("<|begin_of_text|>"),
                      "eos": tok.token_to_id("<|end_of_text|>"), "count": len(ids),
                      "tail": ids[-tail:]}))


def bench(tokenizer_json, text_file):
    """tokenizers on one thread: encode_batch of the documents (blank-line separated; one encode
    of a 100 MB string takes minutes and gigabytes in tokenizers), no special tokens."""
    tok = Tokenizer.from_file(tokenizer_json)
    with open(text_file, encoding="utf-8") as f:
        docs = f.read().split("\n\n")
    start = time.perf_counter()
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    seconds = time.perf_counter() - start
    ids = sum(len(e.ids) for e in encodings)
    checksum = sum(sum(e.ids) for e in encodings)
    print(json.dumps({"docs": len(docs), "ids": ids, "id_sum": checksum, "seconds": seconds}))


if __name__ == "__main__":
    if sys.argv[1] == "--bench":
        bench(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--train-bench":
        train_bench_tokenizer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "--train-llama3":
        train_llama3(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        build_all(sys.argv[1], sys.argv[2])
