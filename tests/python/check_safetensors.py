#!/usr/bin/env python3
"""Independent safetensors reader/writer (json/struct/numpy only) for cskv's interop tests.

  check_safetensors.py check FILE EXPECTED.json   parse FILE, compare with EXPECTED (exit 0 = equal)
  check_safetensors.py write FILE EXPECTED.json   write FILE (unpadded header, so data is unaligned)
                                                  and EXPECTED with the values written

EXPECTED.json: {"metadata": {...}, "tensors": {name: {"dtype": "F32|F16|BF16", "shape": [...],
                "values": [flat values as numbers]}}}
"""
import json
import struct
import sys

import numpy as np

SIZES = {"F32": 4, "F16": 2, "BF16": 2}


def decode(dtype, raw):
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if dtype == "BF16":  # bf16 is the top half of an f32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view("<f4").astype(np.float64)
    raise ValueError("unsupported dtype " + dtype)


def encode(dtype, values):
    v = np.asarray(values, dtype=np.float64)
    if dtype == "F32":
        return v.astype("<f4").tobytes()
    if dtype == "F16":
        return v.astype("<f2").tobytes()
    if dtype == "BF16":  # values are chosen exactly representable, so truncation is exact
        return (v.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    raise ValueError("unsupported dtype " + dtype)


def fail(msg):
    print("check_safetensors: " + msg, file=sys.stderr)
    sys.exit(1)


def check(path, expected_path):
    with open(path, "rb") as f:
        data = f.read()
    with open(expected_path) as f:
        expected = json.load(f)
    (n,) = struct.unpack("<Q", data[:8])
    if (8 + n) % 8 != 0:
        fail("header length %d: 8 + N is not a multiple of 8" % n)
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    if meta != expected.get("metadata", {}):
        fail("metadata %r != expected %r" % (meta, expected.get("metadata", {})))
    if sorted(header) != sorted(expected["tensors"]):
        fail("tensor names %r != expected %r" % (sorted(header), sorted(expected["tensors"])))
    for name, want in expected["tensors"].items():
        got = header[name]
        if got["dtype"] != want["dtype"] or got["shape"] != want["shape"]:
            fail("%s: %s %r != expected %s %r" % (name, got["dtype"], got["shape"],
                                                  want["dtype"], want["shape"]))
        begin, end = got["data_offsets"]
        values = decode(got["dtype"], body[begin:end])
        if not np.array_equal(values, np.asarray(want["values"], dtype=np.float64)):
            fail("%s: values differ" % name)
    print("OK %d tensors" % len(expected["tensors"]))


def write(path, expected_path):
    rng = np.random.default_rng(7)
    tensors = {}
    for name, dtype, shape in [("model.embed_tokens.weight", "F16", [5, 3]),
                               ("model.norm.weight", "F32", [3]),
                               ("lm_head.weight", "BF16", [2, 3, 2]),
                               ("scalar", "F32", [])]:
        count = int(np.prod(shape)) if shape else 1
        # Multiples of 1/8 in [-4, 4): exact in every dtype.
        values = (rng.integers(-32, 32, size=count) / 8.0).tolist()
        tensors[name] = {"dtype": dtype, "shape": shape, "values": values}
    metadata = {"format": "pt", "writer": "numpy"}
    header = {"__metadata__": metadata}
    body = b""
    for name in sorted(tensors, reverse=True):  # data order differs from name order
        t = tensors[name]
        raw = encode(t["dtype"], t["values"])
        header[name] = {"dtype": t["dtype"], "shape": t["shape"],
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    text = json.dumps(header).encode("utf-8")
    if (8 + len(text)) % 4 == 0:  # keep the data section unaligned on purpose
        text += b" "
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + body)
    with open(expected_path, "w") as f:
        json.dump({"metadata": metadata, "tensors": tensors}, f)
    print("wrote %d tensors" % len(tensors))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("check", "write"):
        fail("usage: check_safetensors.py check|write FILE EXPECTED.json")
    (check if sys.argv[1] == "check" else write)(sys.argv[2], sys.argv[3])
