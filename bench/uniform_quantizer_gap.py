"""How far the open format's quantizer (issue 13: q = clamp(round((c - offset) / scale), 0, 2^b - 1),
one static range per channel) can come to the Gaussian rate-distortion bound: the MSE of a unit
Gaussian under the best clipped uniform quantizer of b bits (clip searched on a grid, midpoint
reconstruction) against D(R) = 2^-2b, for b = 1..8.

usage: "$(launch/venv.sh)/bin/python" bench/uniform_quantizer_gap.py
"""
import numpy as np


def main():
    x = np.random.default_rng(0).standard_normal(2_000_000)
    print("| bits | best uniform MSE | bound 2^-2b | ratio |\n|---|---|---|---|")
    for b in range(1, 9):
        levels = 2**b
        best = min(
            np.mean((x - (-clip + (np.clip(np.floor((x + clip) / (2 * clip / levels)), 0,
                                           levels - 1) + 0.5) * (2 * clip / levels)))**2)
            for clip in np.linspace(0.5, 6.0, 300))
        print(f"| {b} | {best:.4g} | {2.0**(-2 * b):.4g} | {best / 2.0**(-2 * b):.2f} |")


if __name__ == "__main__":
    main()
