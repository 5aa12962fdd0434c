"""The ``sparseflash`` command: look at a pattern before running it.

    sparseflash show "local(256)+global(4)" --len 32k                  # writes global_4+local_256.png
    sparseflash show "local(256)+global(4)" "butterfly(64)" --len 16k -o compare.svg
    sparseflash show "local(3)+strided(8)" --len 4k --tokens 0:64,0:64 --block 16
    sparseflash show "local(512) & causal" --len 1M --ascii
    sparseflash stats "chunk(1k)+sink(4)" --len 1M --json
    sparseflash explain "local(256)+global(4)" --len 4k --block 5,0
    sparseflash tune "local(1k) & causal" --len 32k --head-dim 128 --heads 16   # on a GPU

Lengths take a ``k`` (×1024) or ``M`` (×1024²) suffix. Exit status: 0 on success, 2 for a bad
pattern or a bad option (the message says which), 1 when matplotlib is missing for a picture.
``tune`` needs a CUDA GPU (exit 2 without one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings

from .errors import PatternError

_DEFAULT_TILE = 128
_PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


class _UsageError(Exception):
    """A bad option value found after parsing; the message names the option."""


# ------------------------------------------------------------------------------------- option types


def _tokens(text: str) -> int:
    """A non-negative token count: ``4096``, ``32k`` (×1024) or ``1M`` (×1024²)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens such as 4096, 32k or 1M, got {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[match.group(2).lower()]


def _length(text: str) -> int:
    value = _tokens(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 token, got {text!r}")
    return value


def _positive(text: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _block_index(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a block index I,J (query block, key block) such as 3,0, got {text!r}; "
            "the tile size is --tile or --block-m/--block-n"
        )
    return int(match.group(1)), int(match.group(2))


def _window(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    parts = re.fullmatch(r"\s*([^:,]+):([^:,]+),([^:,]+):([^:,]+)\s*", text)
    if not parts:
        raise argparse.ArgumentTypeError(f"expected I0:I1,J0:J1 (query range, key range) such as 0:64,0:64, got {text!r}")
    try:
        i0, i1, j0, j1 = (_tokens(part) for part in parts.groups())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected whole numbers in I0:I1,J0:J1 such as 0:64,0:64, got {text!r}") from None
    return (i0, i1), (j0, j1)


# ------------------------------------------------------------------------------------- the parser


def _add_sizes(parser: argparse.ArgumentParser, block_is_tile: bool) -> None:
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--len", dest="q_len", type=_length, required=True, metavar="N",
                       help="query length (and key length unless --kv-len): 4096, 32k, 1M")
    sizes.add_argument("--kv-len", type=_length, metavar="M", help="key length (default: --len)")
    tile_flags = ("--block", "--tile") if block_is_tile else ("--tile",)
    sizes.add_argument(*tile_flags, dest="tile", type=_positive, metavar="B",
                       help=f"square tile of B x B tokens (default {_DEFAULT_TILE})")
    sizes.add_argument("--block-m", type=_positive, metavar="BM", help="queries per tile")
    sizes.add_argument("--block-n", type=_positive, metavar="BN", help="keys per tile")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseflash",
        description="Look at a sparseflash attention pattern: its block mask, its numbers, one block.",
        epilog='Example: sparseflash show "local(256)+global(4)" --len 32k --ascii',
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sparseflash {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{show,stats,explain,tune}")

    show = commands.add_parser(
        "show", help="draw the block mask (PNG/SVG/PDF, or text with --ascii)",
        description="Draw the block classes of one or more patterns side by side: full blocks run with "
                    "no mask, partial blocks are masked, empty blocks are skipped.",
    )  # fmt: skip
    show.add_argument("patterns", nargs="+", metavar="PATTERN", help='pattern text, e.g. "local(256)+global(4)"')
    _add_sizes(show, block_is_tile=True)
    show.add_argument("-o", "--output", metavar="FILE",
                      help="picture file (.png, .svg or .pdf); default <canonical-pattern>.png here")
    show.add_argument("--ascii", action="store_true", help="print the grid in the terminal instead of a picture")
    show.add_argument("--tokens", type=_window, metavar="I0:I1,J0:J1",
                      help="draw the token-level mask of queries I0:I1 by keys J0:J1")
    show.add_argument("--cells", type=_positive, default=None, metavar="C",
                      help="at most C cells per side in a picture (default 256); more blocks are merged, "
                           "each cell showing the strongest class")
    show.add_argument("--width", type=_positive, metavar="COLUMNS",
                      help="--ascii width in characters (default: the terminal's)")
    show.add_argument("--dpi", type=_positive, default=130, help="resolution of a PNG (default 130)")  # fmt: skip

    stats = commands.add_parser(
        "stats", help="density, block counts, FLOPs, speed-up bound, memory, build time",
        description="The numbers of one pattern at one size: FLOPs are per head, forward pass.",
    )  # fmt: skip
    stats.add_argument("pattern", metavar="PATTERN")
    _add_sizes(stats, block_is_tile=True)
    stats.add_argument("--head-dim", type=_positive, default=128, metavar="D", help="head dimension for FLOPs (default 128)")
    stats.add_argument("--json", action="store_true", help="print a JSON object")

    explain = commands.add_parser(
        "explain", help="the class of one block and the parts of the pattern that make it live",
        description="Evaluate every sub-expression of the pattern on block (I, J) — query block I, key "
                    "block J — and say which ones make it live.",
    )  # fmt: skip
    explain.add_argument("pattern", metavar="PATTERN")
    _add_sizes(explain, block_is_tile=False)
    explain.add_argument("--block", dest="block_index", type=_block_index, required=True, metavar="I,J",
                         help="query block I and key block J (0-based, as in `show --ascii`)")
    explain.add_argument("--json", action="store_true", help="print a JSON object")  # fmt: skip

    tune = commands.add_parser(
        "tune", help="time kernel tiles for one problem on this GPU and keep the fastest",
        description="Run attention over PATTERN once to see which entries of the tuned tables it uses, "
                    "time candidate tiles, warps and stages around each on this GPU, and keep the fastest "
                    "(if 2% faster than the table's) in the tuned file ($SPARSEFLASH_TUNED_FILE, default "
                    "~/.cache/sparseflash/tuned.json), which later runs on this GPU read.",
    )  # fmt: skip
    tune.add_argument("pattern", metavar="PATTERN")
    _add_sizes(tune, block_is_tile=True)
    tune.add_argument("--head-dim", type=_positive, default=128, metavar="D", help="head dimension (default 128)")
    tune.add_argument("--batch", type=_positive, default=1, metavar="B", help="batch size (default 1)")
    tune.add_argument("--heads", type=_positive, default=16, metavar="H", help="query heads (default 16)")
    tune.add_argument("--kv-heads", type=_positive, metavar="HKV", help="key/value heads (default: --heads)")
    tune.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    tune.add_argument("--forward-only", action="store_true", help="tune the forward's tiles only")
    tune.add_argument("--max-candidates", type=_positive, metavar="K", help="time at most K candidates an entry")
    tune.add_argument("--dry-run", action="store_true", help="time and print, keep nothing")  # fmt: skip
    return parser


def _tiles(args) -> tuple[int, int]:
    if args.tile is not None and (args.block_m is not None or args.block_n is not None):
        flag = "--block" if args.command != "explain" else "--tile"
        raise _UsageError(f"give either {flag} B or --block-m/--block-n, not both")
    square = args.tile if args.tile is not None else _DEFAULT_TILE
    return args.block_m or square, args.block_n or square


# ------------------------------------------------------------------------------------- commands


def _show(args, out) -> int:
    from . import viz

    block_m, block_n = _tiles(args)
    kv_len = args.kv_len or args.q_len
    if args.tokens is not None:
        try:
            viz.check_window(args.tokens, args.q_len, kv_len)
        except ValueError as error:
            raise _UsageError(f"--tokens: {error}") from None
    if args.output is not None and not args.output.lower().endswith(_PICTURE_SUFFIXES):
        raise _UsageError(f"-o/--output: {args.output!r} must end in .png, .svg or .pdf")
    if args.ascii:
        for index, pattern in enumerate(args.patterns):
            text = viz.render_ascii(pattern, args.q_len, kv_len, block_m=block_m, block_n=block_n,
                                    width=args.width, tokens=args.tokens)  # fmt: skip
            print(("\n" if index else "") + text, file=out)
        if args.output is None:
            return 0
    figure = viz.show(args.patterns, args.q_len, kv_len, block_m=block_m, block_n=block_n, tokens=args.tokens,
                      max_cells=args.cells or viz.DEFAULT_MAX_CELLS)  # fmt: skip
    if args.output is None:
        suffix = ""
        if args.tokens is not None:
            (i0, i1), (j0, j1) = args.tokens
            suffix = f"__tokens_{i0}-{i1}_{j0}-{j1}"
        path = viz.safe_file_name(args.patterns, suffix) + ".png"
    else:
        path = args.output
    viz.save(figure, path, dpi=args.dpi)
    print(path, file=out)
    return 0


def _stats(args, out) -> int:
    from . import viz

    block_m, block_n = _tiles(args)
    numbers = viz.stats(args.pattern, args.q_len, args.kv_len, block_m=block_m, block_n=block_n,
                        head_dim=args.head_dim)  # fmt: skip
    print(json.dumps(numbers, indent=2) if args.json else viz.stats_text(numbers), file=out)
    return 0


def _explain(args, out) -> int:
    from . import viz

    block_m, block_n = _tiles(args)
    try:
        explanation = viz.explain(args.pattern, args.q_len, args.kv_len, block=args.block_index,
                                  block_m=block_m, block_n=block_n)  # fmt: skip
    except ValueError as error:
        if isinstance(error, PatternError):
            raise
        raise _UsageError(f"--block: {error}") from None
    print(json.dumps(explanation.to_dict(), indent=2) if args.json else explanation, file=out)
    return 0


def _tune(args, out) -> int:
    import torch

    from . import compile_mask
    from .kernels import tuning

    if not torch.cuda.is_available():
        raise _UsageError("needs a CUDA GPU: tiles are tuned on the GPU that will run them")
    kv_heads = args.kv_heads or args.heads
    if args.heads % kv_heads:
        raise _UsageError(f"--heads {args.heads} must be a multiple of --kv-heads {kv_heads}")
    kv_len = args.kv_len or args.q_len
    pattern = args.pattern  # mask blocks as attention() picks them, unless given
    if args.tile is not None or args.block_m is not None or args.block_n is not None:
        block_m, block_n = _tiles(args)
        pattern = compile_mask(args.pattern, args.q_len, kv_len, block_m=block_m, block_n=block_n, device="cuda")
    dtype = getattr(torch, args.dtype)
    q = torch.randn(args.batch, args.heads, args.q_len, args.head_dim, device="cuda", dtype=dtype)
    k, v = (torch.randn(args.batch, kv_heads, kv_len, args.head_dim, device="cuda", dtype=dtype) for _ in range(2))
    report = lambda line: print(line, file=out, flush=True)  # noqa: E731
    try:
        results = tuning.tune(q, k, v, pattern, backward=not args.forward_only, max_candidates=args.max_candidates,
                              save=not args.dry_run, report=report)  # fmt: skip
    except (ValueError, tuning.TunedFileError) as error:  # a head dim out of range, an unreadable tuned file
        if isinstance(error, PatternError):
            raise
        raise _UsageError(str(error)) from None
    for entry, result in results.items():
        report(f"{entry}: {tuning.describe(result['config'])}")
    report("kept nothing (--dry-run)" if args.dry_run else f"kept in {tuning.tuned_file()}")
    return 0


_COMMANDS = {"show": _show, "stats": _stats, "explain": _explain, "tune": _tune}


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed its message (or the help)
        return stop.code if isinstance(stop.code, int) else 0
    prog = f"sparseflash {args.command}"
    try:
        from . import parse

        for text in getattr(args, "patterns", None) or [args.pattern]:
            parse(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = _COMMANDS[args.command](args, sys.stdout)
        for warning in caught:
            print(f"{prog}: warning: {warning.message}", file=sys.stderr)
        return status
    except PatternError as error:
        print(f"{prog}: error: bad pattern: {error}", file=sys.stderr)
        return 2
    except _UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `sparseflash show --ascii ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
