"""The ``tinyrnn`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import TinyRNNError

EXIT_USER_ERROR = 2
EXIT_MISMATCH = 1


def _export(args: argparse.Namespace) -> int:
    from .api import export_program
    from .frontend import load_program

    program = load_program(args.model)
    manifest = export_program(
        program, args.out, format=args.format, name=args.name, max_seq_len=args.max_seq_len
    )
    sizes = manifest["sizes"]
    print(
        f"wrote {args.out}/{args.name}.h, {args.name}.c, {args.name}.json "
        f"({manifest['format']}; weights {sizes['weights_bytes']} B, state "
        f"{sizes['state_bytes']} B, scratch {sizes['scratch_bytes']} B)"
    )
    return 0


def _run_host(args: argparse.Namespace) -> int:
    from .host import load
    from .io import load_inputs, save_outputs

    inputs = load_inputs(args.input)
    outputs = load(args.dir).run(*inputs)
    save_outputs(args.output, outputs)
    shapes = ", ".join(f"out{i} {tuple(o.shape)}" for i, o in enumerate(outputs))
    print(f"wrote {args.output}: {shapes}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify

    report = verify(args.model, args.dir, args.input, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in report["lines"]:
            print(line)
    return 0 if report["ok"] else EXIT_MISMATCH


def _example(args: argparse.Namespace) -> int:
    from .example import main as example_main

    return example_main(Path(args.out), board=args.board)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyrnn",
        description="Export PyTorch RNN/LSTM/GRU models to C for microcontrollers.",
    )
    parser.add_argument("--version", action="version", version=f"tinyrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write NAME.h/.c/.json from a torch.export archive")
    p.add_argument("model", help="a .pt2 archive written by torch.export.save")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="float32", help="number format (float32)")
    p.add_argument("--name", default="model", help="C symbol prefix and file name")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="sequence buffer capacity for bidirectional models "
                        "(default: the example input's length)")
    p.set_defaults(func=_export)

    p = sub.add_parser("run-host", help="compile the exported C on the host and run it")
    p.add_argument("dir", help="directory written by tinyrnn export")
    p.add_argument("--input", required=True, help=".npy (one argument) or .npz (in0, in1, ...)")
    p.add_argument("--output", required=True, help=".npz to write (out0, out1, ...)")
    p.set_defaults(func=_run_host)

    p = sub.add_parser("verify", help="compare the exported C with torch")
    p.add_argument("model", help="the .pt2 archive that was exported")
    p.add_argument("dir", help="directory written by tinyrnn export")
    p.add_argument("--input", required=True, help=".npy (one argument) or .npz (in0, in1, ...)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max absolute error allowed (default: 1e-5 for float32)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)

    p = sub.add_parser("example", help="train, export, compile and verify the built-in example")
    p.add_argument("--out", default="tinyrnn-example", help="working directory")
    p.add_argument("--board", default="mps2-an386", help="emulated board to run on (QEMU)")
    p.set_defaults(func=_example)

    try:
        from . import cross
    except ImportError:
        cross = None  # type: ignore[assignment]
    if cross is not None and hasattr(cross, "register_cli"):
        cross.register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TinyRNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
