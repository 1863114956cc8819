"""HF transformers' own forward of an HF model directory in float64: the independent reference
of tests/model/llama_forward_test.cpp (RoPE variants). Writes, as raw little-endian float64, each
layer's input_layernorm output [batch*seq, hidden] (layer 0 first), then the logits
[batch, seq, vocab].

usage: model_hf_forward.py MODEL_DIR TOKENS OUT   (TOKENS: rows separated by ';', ids by ',')
"""
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, tokens_arg, out = sys.argv[1:4]
    tokens = torch.tensor([[int(t) for t in row.split(",")] for row in tokens_arg.split(";")])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64,
                                                 attn_implementation="eager")
    model.eval()
    captured = []
    for layer in model.model.layers:
        layer.input_layernorm.register_forward_hook(
            lambda _m, _i, o: captured.append(o.reshape(-1, o.shape[-1]).clone()))
    with torch.no_grad():
        logits = model(tokens).logits
    with open(out, "wb") as f:
        for x in captured:
            f.write(x.contiguous().numpy().astype("<f8").tobytes())
        f.write(logits.contiguous().numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
