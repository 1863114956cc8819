#!/usr/bin/env python3
"""Checks the outputs of `cskv merge` from Python, bit for bit against EXPECTED.json.

usage: checkpoint_check_export.py EXPECTED.json
  - torch.load of <name>_k.ckpt / <name>_v.ckpt (default, weights_only=True and False): a list
    over layers of 2-tuples of dicts {"weight": float32 tensor} (a [r, H], b [D, r]); shapes and
    raw float32 bits compared;
  - compressor.safetensors parsed with json + struct + numpy: __metadata__ entries and every
    tensor's dtype, shape and bits compared.
Prints "ok: <layers> layers, <tensors> tensors" and exits 0, or names the first mismatch and
exits 1.
"""
import json
import struct
import sys

import numpy as np
import torch


def fail(msg):
    print("checkpoint_check_export: " + msg, file=sys.stderr)
    sys.exit(1)


def expect_bits(what, arr, exp):
    if arr.dtype != np.float32:
        fail(f"{what}: dtype {arr.dtype}, expected float32")
    if list(arr.shape) != exp["shape"]:
        fail(f"{what}: shape {list(arr.shape)}, expected {exp['shape']}")
    got = np.ascontiguousarray(arr).view(np.uint32).reshape(-1)
    want = np.array(exp["bits"], dtype=np.uint32)
    if not np.array_equal(got, want):
        i = int(np.nonzero(got != want)[0][0])
        fail(f"{what}: element {i} has bits {got[i]:#010x}, expected {want[i]:#010x}")


def check_ckpt(path, layers):
    # torch >= 2.6 defaults to weights_only=True (the reference code's plain torch.load): the file
    # must hold nothing but lists, tuples, dicts and tensors, and read the same either way.
    check_ckpt_contents(path, torch.load(path), layers)
    check_ckpt_contents(path, torch.load(path, weights_only=True), layers)
    check_ckpt_contents(path, torch.load(path, weights_only=False), layers)


def check_ckpt_contents(path, obj, layers):
    if type(obj) is not list:
        fail(f"{path}: top level is {type(obj).__name__}, expected list")
    if len(obj) != len(layers):
        fail(f"{path}: {len(obj)} layers, expected {len(layers)}")
    for i, item in enumerate(obj):
        if type(item) is not tuple or len(item) != 2:
            fail(f"{path}[{i}]: {type(item).__name__}, expected a 2-tuple")
        for j, which in enumerate("ab"):
            d = item[j]
            if not isinstance(d, dict):
                fail(f"{path}[{i}][{j}]: {type(d).__name__}, expected dict (a state_dict)")
            if list(d.keys()) != ["weight"]:
                fail(f"{path}[{i}][{j}]: keys {list(d.keys())}, expected ['weight']")
            t = d["weight"]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
                fail(f"{path}[{i}][{j}]['weight']: expected a float32 tensor, found {t!r:.60}")
            expect_bits(f"{path}[{i}][{j}]['weight']", t.numpy(), layers[str(i)][which])


def check_safetensors(path, exp_meta, exp_tensors):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        fail(f"{path}: no __metadata__")
    for key, value in exp_meta.items():
        if meta.get(key) != value:
            fail(f"{path}: __metadata__[{key!r}] is {meta.get(key)!r}, expected {value!r}")
    json.loads(meta["cskv_config"])  # the resolved config is JSON
    if set(header) != set(exp_tensors):
        fail(f"{path}: tensors {sorted(header)}, expected {sorted(exp_tensors)}")
    for name, exp in exp_tensors.items():
        entry = header[name]
        if entry["dtype"] != "F32":
            fail(f"{path}: {name} has dtype {entry['dtype']}, expected F32")
        begin, end = entry["data_offsets"]
        arr = np.frombuffer(data[8 + n + begin:8 + n + end], dtype="<f4").reshape(entry["shape"])
        expect_bits(f"{path}: {name}", arr, exp)


def main():
    if len(sys.argv) != 2:
        fail("usage: checkpoint_check_export.py EXPECTED.json")
    with open(sys.argv[1]) as f:
        exp = json.load(f)
    check_ckpt(exp["k_ckpt"], exp["layers"]["k"])
    check_ckpt(exp["v_ckpt"], exp["layers"]["v"])
    check_safetensors(exp["compressor"], exp["metadata"], exp["tensors"])
    print(f"ok: {len(exp['layers']['k'])} layers, {len(exp['tensors'])} tensors")


if __name__ == "__main__":
    main()
