#!/usr/bin/env python3
# Interop check of an activation shard with h5py (DESIGN.md §3 schema): datasets, shapes, dtypes
# and attributes. Usage: data_check_shard.py SHARD HIDDEN SEQ_LEN NUM_SEQS DTYPE LAYER[,LAYER...]
import sys

import h5py
import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def main():
    path, hidden, seq_len, num_seqs, dtype, layers = sys.argv[1:7]
    hidden, seq_len, num_seqs = int(hidden), int(seq_len), int(num_seqs)
    layers = [int(x) for x in layers.split(",")]
    tokens = num_seqs * seq_len
    with h5py.File(path, "r") as f:
        a = f.attrs
        want = {"format_version": 1, "hidden_size": hidden, "seq_len": seq_len,
                "token_count": tokens, "dtype": dtype}
        for key, value in want.items():
            if key not in a:
                fail("attribute %s missing" % key)
            got = a[key]
            if isinstance(got, bytes):
                got = got.decode()
            if got != value:
                fail("attribute %s is %r, expected %r" % (key, got, value))
        for key in ("model_config_hash", "split"):
            if not isinstance(a[key], str) or not a[key]:
                fail("attribute %s is %r, expected a non-empty str" % (key, a[key]))
        if a["split"] not in ("train", "holdout"):
            fail("split is %r" % a["split"])
        if int(a["num_layers"]) <= max(layers):
            fail("num_layers %r does not cover layers %r" % (a["num_layers"], layers))
        if list(a["layers"]) != layers:
            fail("layers attribute %r, expected %r" % (list(a["layers"]), layers))
        seq_ids = np.asarray(a["sequence_ids"])
        if seq_ids.shape != (num_seqs,):
            fail("sequence_ids shape %r, expected (%d,)" % (seq_ids.shape, num_seqs))
        int(a["seed"])

        t = f["tokens"]
        if t.shape != (num_seqs, seq_len) or t.dtype != np.uint32:
            fail("/tokens is %r %s, expected (%d, %d) uint32" % (t.shape, t.dtype, num_seqs, seq_len))
        np_dtype = np.float16 if dtype == "float16" else np.float32
        for layer in layers:
            x = f["layers/%d/x" % layer]
            if x.shape != (tokens, hidden) or x.dtype != np_dtype:
                fail("/layers/%d/x is %r %s, expected (%d, %d) %s"
                     % (layer, x.shape, x.dtype, tokens, hidden, dtype))
            if x.chunks != (seq_len, hidden):
                fail("/layers/%d/x chunks %r, expected (%d, %d)" % (layer, x.chunks, seq_len, hidden))
            if x.maxshape != (None, hidden):
                fail("/layers/%d/x maxshape %r, expected (None, %d)" % (layer, x.maxshape, hidden))
            data = x[...]
            if not np.all(np.isfinite(data)):
                fail("/layers/%d/x has non-finite values" % layer)
        # Print what the C++ test compares: the sum of layer 0 in float64 and the first token row.
        first = f["layers/%d/x" % layers[0]][...].astype(np.float64)
        print("SUM %.17g" % first.sum())
        print("TOKENS " + " ".join(str(v) for v in t[0]))
        print("SEQIDS " + " ".join(str(v) for v in seq_ids))
    print("OK")


if __name__ == "__main__":
    main()
