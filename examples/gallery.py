"""Regenerate the pattern gallery of README.md and docs/visualisation.md (PNGs in docs/gallery/).

    pip install -e ".[viz]" && python examples/gallery.py [--out docs/gallery]

Each picture is `sparseflash.show` at 16k tokens with 128 x 128 tiles (the kernels' default), so it
shows exactly which blocks the kernels run: blue blocks with no mask code, orange blocks masked,
grey blocks skipped. Two token-level windows show what the patterns allow pair by pair, and one
picture at 1M tokens shows how large grids are reduced.
"""

from __future__ import annotations

import argparse
import pathlib
import time
import warnings

import sparseflash
from sparseflash import viz

LENGTH = 16 * 1024

# (file stem, pattern, keyword arguments of sparseflash.show)
GALLERY = [
    ("local_global", "local(256)+global(4)", {}),
    ("strided_local", "strided(1k)+local(128)", {}),
    ("butterfly", "butterfly(64)", {}),
    ("sliding_window", "local(512) & causal", {}),
    ("chunk_sink", "chunk(1k) + sink(4)", {}),
    ("strided_local_tokens", "strided(128)+local(64)", {"tokens": ((0, 384), (0, 384))}),
    ("local_strided_small", "local(3)+strided(8)", {"tokens": ((0, 48), (0, 48)), "block_m": 16, "block_n": 16}),
]

# A picture at 1M tokens: 8192 x 8192 blocks drawn as 256 x 256 cells, each the strongest class.
LARGE = ("million_tokens", ["local(256)+global(4)", "butterfly(64)"], 1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent / "docs" / "gallery"))
    parser.add_argument("--dpi", type=int, default=90)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # strided(128) with 128-token tiles touches every block; the picture is there to show exactly that.
    warnings.filterwarnings("ignore", category=sparseflash.SparsityWarning)

    for stem, pattern, options in GALLERY:
        start = time.perf_counter()
        figure = viz.show(pattern, LENGTH, **options)
        path = viz.save(figure, str(out / f"{stem}.png"), dpi=args.dpi)
        print(f"{path}  ({time.perf_counter() - start:.2f} s)")

    stem, patterns, length = LARGE
    start = time.perf_counter()
    figure = viz.show(patterns, length)
    path = viz.save(figure, str(out / f"{stem}.png"), dpi=args.dpi)
    print(f"{path}  ({time.perf_counter() - start:.2f} s)")


if __name__ == "__main__":
    main()
