"""``coat-transfer``: COAT appearance transfer from the command line.

    coat-transfer CONTENT STYLE -o OUT.png [--n N] [--model NAME|PATH] [--correspondence VIS.png]
    coat-transfer --pairs pairs.csv --out-dir DIR [--batch-size B]
    coat-transfer --list-models

Errors print one line and exit with status 2. With ``--pairs``, a row that fails does not stop the others:
each failed row prints its own line (naming the CSV line) and the exit status is 2 at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image

from .image_io import OUTPUT_SIZES, load_image, read_pairs_csv
from .pretrained import available_models, default_model, describe_model, model_load_error, resolve_model

if TYPE_CHECKING:  # torch and transformers load after the arguments are checked: --help stays fast
    from .pipeline_coat import COATAppearanceTransferPipeline

PROG = "coat-transfer"
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _file_key(path: str | os.PathLike) -> str:
    """What tells two paths to the same file apart, links and ``..`` resolved (the file need not exist)."""
    return os.path.normcase(os.path.realpath(path))


def _writable(path: Path) -> bool:
    """Whether PIL can write an image in the format of ``path``'s extension."""
    PIL.Image.init()
    return PIL.Image.registered_extensions().get(path.suffix.lower()) in PIL.Image.SAVE


def _device_error(name: str) -> str | None:
    """Why ``--device name`` cannot run COAT here, or None."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return f"not a device: {name!r}"
    if device.type not in DEVICE_TYPES:
        return f"{name!r} cannot run COAT; use cpu, cuda or cuda:N (or mps on Apple silicon)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Re-render the CONTENT image's object with the STYLE image's appearance (COAT, BMVC 2022).",
        epilog="Images: files or http(s) URLs; each is resized as a whole to the model's square size, and the "
        "result is resized back to the content's size (see --output-size).",
    )
    parser.add_argument("content", nargs="?", help="content image (structure to keep)")
    parser.add_argument("style", nargs="?", help="style image (appearance to take)")
    parser.add_argument("-o", "--output", type=Path, help="where to write the result (PNG, JPEG, ...)")
    parser.add_argument("--pairs", type=Path, metavar="CSV",
                        help="a CSV with columns content,style[,output]; relative paths are read from the CSV's folder")
    parser.add_argument("--out-dir", type=Path, metavar="DIR", help="where --pairs results go")
    parser.add_argument("--model", metavar="NAME|PATH",
                        help=f"a bundled model name ({', '.join(available_models())}), a local folder or a Hub id "
                        f"(default: {default_model()})")
    parser.add_argument("--n", type=int, help="content modulation layers, 0..K (default: the model's default_n); "
                        "smaller takes more of the style")
    parser.add_argument("--correspondence", type=Path, metavar="VIS.png",
                        help="also write a picture of the content-style matches (single pair only)")
    parser.add_argument("--output-size", choices=OUTPUT_SIZES, default="content",
                        help="'content': the content image's size (default); 'model': the model's square size")
    parser.add_argument("--seed", type=int, help="seed for the decoder's noise (reproducible results)")
    parser.add_argument("--alignment",
                        help="how style features are aligned to the content: mutual (the paper: mutual nearest "
                        "neighbours only), nearest (every position, most style) or soft (default: the model's)")
    parser.add_argument("--color-match", action="store_true",
                        help="give the result the style's colour statistics afterwards (Reinhard in Lab; beyond "
                        "the paper, see the README)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the first GPU if any, else cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per model call with --pairs (default 8)")
    parser.add_argument("--list-models", action="store_true",
                        help="list the bundled models, one line each, and exit")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.list_models:
        return
    if args.pairs is not None:
        if args.content or args.style or args.output:
            parser.error("--pairs replaces CONTENT STYLE -o OUT: give one or the other")
        if args.out_dir is None:
            parser.error("--pairs needs --out-dir")
        if args.correspondence is not None:
            parser.error("--correspondence works with a single pair, not with --pairs")
    elif not (args.content and args.style and args.output):
        parser.error("give CONTENT STYLE -o OUT.png, or --pairs CSV --out-dir DIR")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    inputs = {_file_key(path): name for name, path in (("content", args.content), ("style", args.style))
              if path and not _is_url(path)}
    for flag, path in (("--output", args.output), ("--correspondence", args.correspondence)):
        if path is None:
            continue
        if not _writable(path):
            parser.error(f"{flag}: cannot write the image format {path.suffix or '(no extension)'!r} of {path}")
        if _file_key(path) in inputs:
            parser.error(f"{flag}: {path} is the {inputs[_file_key(path)]} image; refusing to overwrite an input")
    if args.output and args.correspondence and _file_key(args.output) == _file_key(args.correspondence):
        parser.error("--correspondence: the same file as --output")
    if args.device is not None and (error := _device_error(args.device)):
        parser.error(f"--device: {error}")


def _read_pairs(csv_path: Path, out_dir: Path) -> list[dict]:
    """Rows of the CSV as {"line", "content", "style", "output"} (see :func:`coat_hf.image_io.read_pairs_csv`);
    an empty output cell names the result after the row, content and style.

    Outputs must be relative paths inside ``out_dir`` (no ``..``), each row's its own, and none may be an input.
    """
    out_root = _file_key(out_dir)
    inputs: dict[str, int] = {}  # input file -> the first line that reads it
    outputs: dict[str, int] = {}
    rows = []
    for i, pair in enumerate(read_pairs_csv(csv_path, "--pairs")):
        where = f"--pairs: {csv_path} line {pair.line}"
        output = pair.output or f"{i:04d}_{Path(pair.content).stem}_{Path(pair.style).stem}.png"
        if Path(output).is_absolute() or ".." in Path(output).parts:
            raise ValueError(f"{where}: output {output!r} must be a relative path inside --out-dir, without '..'")
        if not _writable(Path(output)):
            raise ValueError(f"{where}: cannot write the image format of output {output!r}")
        for value in (pair.content, pair.style):
            if not _is_url(value):
                inputs.setdefault(_file_key(value), pair.line)
        key = _file_key(out_dir / output)
        if os.path.commonpath([key, out_root]) != out_root:
            raise ValueError(f"{where}: output {str(out_dir / output)!r} leads out of --out-dir")
        if key in outputs:
            raise ValueError(f"{where}: output {str(out_dir / output)!r} is also line {outputs[key]}'s")
        outputs[key] = pair.line
        rows.append({"line": pair.line, "content": pair.content, "style": pair.style, "output": out_dir / output})
    for output, line in outputs.items():
        if output in inputs:
            raise ValueError(f"--pairs: {csv_path} line {line}: the output would overwrite an input image of line "
                             f"{inputs[output]}")
    return rows


def _save(image: PIL.Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _run_pairs(pipe: COATAppearanceTransferPipeline, rows: list[dict], args: argparse.Namespace, params: dict
               ) -> list[str]:
    """Transfer every row, ``args.batch_size`` pairs per model call. A row whose images cannot be read or whose
    result cannot be written does not stop the others; returns those rows' errors, each naming its line."""
    from tqdm.auto import tqdm

    failures, written = [], 0
    with tqdm(total=len(rows), unit="pair", desc=PROG) as bar:
        for start in range(0, len(rows), args.batch_size):
            chunk, inputs = [], []
            for row in rows[start : start + args.batch_size]:
                where = f"{args.pairs} line {row['line']}"
                try:
                    inputs.append({key: load_image(row[key], f"{where}: {key}") for key in ("content", "style")})
                    chunk.append(row)
                except ValueError as err:
                    failures.append(str(err))
            for row, result in zip(chunk, pipe(inputs, batch_size=args.batch_size, **params) if inputs else ()):
                try:
                    _save(result["image"], row["output"])
                    written += 1
                except (OSError, ValueError) as err:
                    failures.append(f"{args.pairs} line {row['line']}: cannot write {row['output']}: "
                                    f"{getattr(err, 'strerror', None) or err}")
            bar.update(min(args.batch_size, len(rows) - start))
    failed = f"; {len(failures)} of {len(rows)} pairs failed" if failures else ""
    print(f"wrote {written} images to {args.out_dir}{failed}")
    return failures


def _load_pipeline(model: str | None, device: str | None) -> COATAppearanceTransferPipeline:
    """The pipeline for a bundled name, a local folder or a Hub id (default: the bundled default)."""
    from transformers import pipeline

    from .pipeline_coat import TASK

    try:
        return pipeline(TASK, model=resolve_model(model), device=device)
    except (OSError, ValueError) as err:
        raise model_load_error(model, err) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.list_models:
        names = {name: f"{name} (default)" if name == default_model() else name for name in available_models()}
        width = max(map(len, names.values()))
        print("\n".join(f"{label:<{width}}  {describe_model(name)}" for name, label in names.items()))
        return 0
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' weight-loading bar; ours counts pairs
    try:
        # The CSV, or the single pair's images, are checked before the model loads: bad paths fail fast.
        if args.pairs is not None:
            rows = _read_pairs(args.pairs, args.out_dir)
        else:
            images = [load_image(args.content, "content"), load_image(args.style, "style")]
        pipe = _load_pipeline(args.model, args.device)
        params = {"n": args.n, "seed": args.seed, "output_size": args.output_size, "alignment": args.alignment,
                  "color_match": args.color_match}
        if args.pairs is not None:
            failures = _run_pairs(pipe, rows, args, params)
            for failure in failures:
                print(f"{PROG}: error: {failure}", file=sys.stderr)
            return 2 if failures else 0
        result = pipe(*images, return_correspondence=args.correspondence is not None, **params)
        _save(result["image"], args.output)
        print(f"wrote {args.output}")
        if args.correspondence is not None:
            _save(result["correspondence"]["image"], args.correspondence)
            print(f"wrote {args.correspondence}")
    except (OSError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
