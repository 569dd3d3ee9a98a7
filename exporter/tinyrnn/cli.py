"""The ``tinyrnn`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import TinyRNNError, TinyRNNWarning

EXIT_USER_ERROR = 2
EXIT_MISMATCH = 1


def layer_formats_from_args(given: Sequence[str] | None) -> dict[str, str] | None:
    """``--layer-format NAME=FORMAT`` (repeatable) as ``{NAME: FORMAT}``."""
    if not given:
        return None
    chosen: dict[str, str] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep:
            raise TinyRNNError(f"--layer-format {item!r}: write NAME=FORMAT, e.g. "
                               "--layer-format encoder.0=w16a16")
        if chosen.get(name, value) != value:
            raise TinyRNNError(f"--layer-format gives {name!r} two formats ({chosen[name]} and "
                               f"{value}); give each layer one")
        chosen[name] = value
    return chosen


def _export(args: argparse.Namespace) -> int:
    from .api import check_options, export_program, ignore_calibration_for_float
    from .frontend.reader import load_program
    from .io import load_inputs
    from .outputs import check_folder
    from .targets.package import check_library_name, package_options_given

    # the options first: a typo fails in a moment, before the model is loaded
    layer_formats = layer_formats_from_args(args.layer_format)
    check_options(args.format, args.name, args.max_seq_len, layer_formats)
    check_folder(args.out, "--out")
    if args.package is not None:  # refuse a form or a name the package cannot take up front
        check_library_name(args.name, args.package)
    elif package_options_given(args):
        raise TinyRNNError("--input, --lib-version, --url and --force apply to the library of "
                           "--package FORM; add --package or drop them")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TinyRNNWarning)
        # float32 ignores --calibration (with a warning) without reading the file
        path = ignore_calibration_for_float(args.format, args.calibration)
        calibration = load_inputs(path) if path else None
        program = load_program(args.model)
        manifest = export_program(
            program, args.out, format=args.format, name=args.name, max_seq_len=args.max_seq_len,
            calibration=calibration, layer_formats=layer_formats, stream=args.stream,
        )
    for w in caught:
        if issubclass(w.category, TinyRNNWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    sizes = manifest["sizes"]
    files = [manifest["c_interface"]["header"], *manifest["c_interface"]["sources"]]
    print(
        f"wrote {args.out}/{', '.join(files)}, {args.name}.json "
        f"({manifest['format']}; weights {sizes['weights_bytes']} B, state "
        f"{sizes['state_bytes']} B, scratch {sizes['scratch_bytes']} B)"
    )
    if args.package is not None:
        from .targets.package import default_package_dir, package_from_args

        out = args.package_out or default_package_dir(args.out, args.package)
        print(package_from_args(args, Path(args.out), args.package, out).format())
    return 0


def _run_host(args: argparse.Namespace) -> int:
    from .commands import run_host

    result = run_host(args.dir, args.input, output=args.output)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .commands import verify

    result = verify(args.model, args.dir, args.input, tolerance=args.tolerance)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0 if result.ok else EXIT_MISMATCH


def _example(args: argparse.Namespace) -> int:
    if args.model == "silero-vad":
        from .vad_example import main as vad_main

        return vad_main(Path(args.out), board=args.board, fmt=args.format or "float32",
                        layer_formats=layer_formats_from_args(args.layer_format))
    from .example import main as example_main

    return example_main(Path(args.out), board=args.board, fmt=args.format or "w8a16",
                        layer_formats=layer_formats_from_args(args.layer_format))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyrnn",
        description="Export PyTorch RNN/LSTM/GRU models to C for microcontrollers.",
    )
    parser.add_argument("--version", action="version", version=f"tinyrnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="write NAME.h/.c/.json from a torch.export archive")
    p.add_argument("--package", metavar="FORM", default=None,
                   help="also write the export as a library: cmake, zephyr, arduino, "
                        "platformio or cmsis-pack (see `tinyrnn package`)")
    p.add_argument("--package-out", type=Path, default=None, metavar="PKGDIR",
                   help="the library folder of --package (default: OUT-FORM beside OUT)")
    p.add_argument("model", help="a .pt2 archive written by torch.export.save")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="w8a16", choices=("w8a16", "w16a16", "float32"),
                   help="number format: int8 weights / int16 activations (default), int16 "
                        "weights, or float32")
    p.add_argument("--calibration", default=None, metavar="X",
                   help="representative inputs for the integer formats' ranges: .npy (one "
                        "argument) or .npz (in0, in1, ...) as for run-host; without it the "
                        "example input saved with the model is used (with a warning)")
    p.add_argument("--layer-format", action="append", default=None, metavar="NAME=FORMAT",
                   help="per-layer format of an integer export: the layer at torch module "
                        "path NAME (e.g. encoder.0; rnn for all layers of a stacked LSTM, "
                        "rnn.l1 for its second) gets FORMAT's weight bits (w8a16 or w16a16); "
                        "repeatable")
    p.add_argument("--name", default="model", help="C symbol prefix and file name")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="sequence buffer capacity for bidirectional models "
                        "(default: the example input's length)")
    p.add_argument("--stream", action="store_true",
                   help="demand a NAME_step that runs one step at a time and equals NAME_run "
                        "(a Conv1d front-end must be causal); refuse the model otherwise")
    from .targets.package import add_package_options

    add_package_options(p.add_argument_group("library options (with --package)"))
    p.set_defaults(func=_export)

    p = sub.add_parser("run-host", help="compile the exported C on the host and run it")
    p.add_argument("dir", help="directory written by tinyrnn export")
    p.add_argument("--input", required=True, help=".npy (one argument) or .npz (in0, in1, ...)")
    p.add_argument("--output", required=True, help=".npz to write (out0, out1, ...)")
    p.add_argument("--json", action="store_true", help="print the outputs as JSON")
    p.set_defaults(func=_run_host)

    p = sub.add_parser("verify", help="compare the exported C with torch and, for integer "
                                      "formats, with the bit-exact reference")
    p.add_argument("model", help="the .pt2 archive that was exported")
    p.add_argument("dir", help="directory written by tinyrnn export")
    p.add_argument("--input", required=True, help=".npy (one argument) or .npz (in0, in1, ...)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="float32 only: max absolute error allowed (default 1e-5); integer "
                        "formats must equal the reference exactly")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)

    p = sub.add_parser("example", help="train, export, compile and verify the built-in example")
    p.add_argument("--model", default="gesture", choices=("gesture", "silero-vad"),
                   help="gesture: a small LSTM classifier trained in seconds (default); "
                        "silero-vad: Silero VAD with the silero-vad package's weights, one "
                        "step per 32 ms frame (pip install 'tinyrnn[silero]')")
    p.add_argument("--out", default="tinyrnn-example", help="working directory")
    p.add_argument("--board", default="mps2-an386", help="emulated board to run on (QEMU)")
    p.add_argument("--format", default=None, choices=("w8a16", "w16a16", "float32"),
                   help="number format of the export (default: w8a16 for gesture, float32 "
                        "for silero-vad)")
    p.add_argument("--layer-format", action="append", default=None, metavar="NAME=FORMAT",
                   help="as for export: other weight bits for a layer of an integer export, "
                        "e.g. --layer-format stft_conv=w16a16 (repeatable)")
    p.set_defaults(func=_example)

    # the board (cross.py) and measurement (profile.py, report.py) commands
    # (imported by name: tinyrnn.profile, .report and .package are the API's functions)
    from .check.report import register_cli as report_cli
    from .targets.cross import register_cli as cross_cli
    from .targets.package import register_cli as package_cli
    from .targets.profile import register_cli as profile_cli

    for register in (cross_cli, profile_cli, report_cli, package_cli):
        register(sub)
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
