"""COAT in the browser: ``python app.py`` serves correspondence-driven object appearance transfer.

Drop a content photo and a style photo: the app re-renders the content's object with the style's
appearance (COAT, Jeon et al., BMVC 2022) and shows the correspondences behind it, the mutual nearest
neighbours of Eq. 1-3 at one feature scale and the soft mutual consistency Q of Eq. 2 over the content.
A slider picks n, the number of modulation layers that keep the content's style vectors; "Sweep" renders
every n at once.

``--model`` (or ``COAT_MODEL``) picks the model, by default the one bundled with the package; the page offers
the model's own example pairs (photos of its category shipped inside installed packages, see
``coat_hf/pretrained/examples.py``) and ``--examples DIR`` adds yours. Hugging Face Spaces runs this file as is
and sets GRADIO_SERVER_NAME/PORT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import PIL.Image  # noqa: E402
from PIL import ImageOps  # noqa: E402
from transformers import pipeline  # noqa: E402

from coat_hf.configuration_coat import ALIGNMENT_RULES  # noqa: E402
from coat_hf.image_io import find_images, load_image, read_pairs_csv  # noqa: E402
from coat_hf.pipeline_coat import TASK, COATAppearanceTransferPipeline  # noqa: E402
from coat_hf.pretrained import UNTRAINED_MODEL, is_untrained, resolve_model  # noqa: E402
from coat_hf.pretrained.examples import ExamplePhoto, model_examples  # noqa: E402
from coat_hf.visualization import confidence_heatmap, default_scale  # noqa: E402

logger = logging.getLogger(__name__)

QUEUE_SIZE = 16
"""Requests waiting beyond this many are turned away (the page says the queue is full)."""

MAX_UPLOAD = "25mb"
"""Largest accepted upload; images are also refused above ``coat_hf.image_io.MAX_IMAGE_PIXELS``."""

SEED = 0
"""Seeds the decoder's noise, so results for different n (and repeated runs) differ only by n."""

EXAMPLE_SIZE = 256
"""Example photos are centre-cropped to squares of this side (the model sees images resized as a whole)."""

HEATMAP_HEIGHT = 256
"""Height in pixels of the confidence heatmap (the content's aspect ratio is kept), as of the matches picture."""

PANEL_HEIGHT = 300
"""Display height of the image panels, in CSS pixels."""

STRIP_HEIGHT = 160
"""Display height of the sweep strip, in CSS pixels."""

N_HELP = "Lower n = more of the style: the first n modulation layers keep the content's style vectors."


@contextmanager
def shown_in_page() -> Iterator[None]:
    """Bad input (the pipeline's ``ValueError``) becomes a ``gr.Error``: the page shows its message and the
    server keeps serving."""
    try:
        yield
    except ValueError as err:
        raise gr.Error(str(err), title="Cannot run COAT on this input", print_exception=False) from None


ALIGNMENT_CHOICES = ALIGNMENT_RULES
ALIGNMENT_HELP = ("mutual: style features only where the two photos match both ways (the paper); nearest: every "
                  "position takes its closest style feature (most style); soft: confidence-weighted blend")
COLOR_MATCH_HELP = "Give the result the style's colour statistics afterwards (Reinhard in Lab; beyond the paper)"


def as_n(value: Any) -> Any:
    """The slider's value as the integer n (clients may send 3.0); anything else goes to the pipeline's check."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def as_scale(value: Any) -> Any:
    """The dropdown's value as the integer scale: the API advertises the choices as strings ("0", "1", ...),
    clients may also send integers; anything else goes to the pipeline's check."""
    return int(value) if isinstance(value, str) and value.isdecimal() else value


def prepare_example(source: str | os.PathLike | ExamplePhoto, out_dir: Path, stem: str) -> str:
    """A square PNG copy of ``source`` (a photo file, or a model's :class:`ExamplePhoto`, cropped; then a centre
    crop of :data:`EXAMPLE_SIZE` px) in ``out_dir``; returns its path."""
    image = source.load() if isinstance(source, ExamplePhoto) else load_image(source, stem)
    image = ImageOps.fit(image, (EXAMPLE_SIZE, EXAMPLE_SIZE), PIL.Image.Resampling.LANCZOS)
    path = out_dir / f"{stem}.png"
    image.save(path)
    return str(path)


def folder_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(content, style) pairs from ``folder``: the rows of its ``pairs.csv`` (read by
    :func:`coat_hf.image_io.read_pairs_csv`, as ``coat-transfer --pairs`` reads it) if present, else its images
    (:func:`coat_hf.image_io.find_images`) taken two by two."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--examples: not a folder: {folder}")
    table = folder / "pairs.csv"
    if table.is_file():
        return [(Path(row.content), Path(row.style)) for row in read_pairs_csv(table, "--examples")]
    images = find_images(folder, "--examples")
    if len(images) % 2:
        logger.warning("--examples: %s has an odd number of images; %s is left out", folder, images[-1].name)
    return list(zip(images[0::2], images[1::2]))


def build_examples(out_dir: str | os.PathLike, folder: str | os.PathLike | None = None,
                   model: str | os.PathLike | None = None) -> list[list[str]]:
    """Example pairs for the page, written as square PNGs into ``out_dir``: those of ``folder`` (see
    :func:`folder_pairs`) first, then ``model``'s own (:func:`coat_hf.pretrained.examples.model_examples`: photos of
    its category shipped inside installed packages). Unreadable photos are skipped."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = (folder_pairs(folder) if folder is not None else []) + model_examples(model)
    examples = []
    for i, (content, style) in enumerate(pairs):
        try:
            examples.append([prepare_example(content, out_dir, f"{i:02d}-content-{example_stem(content)}"),
                             prepare_example(style, out_dir, f"{i:02d}-style-{example_stem(style)}")])
        except ValueError as err:
            logger.warning("skipping example pair %d: %s", i, err)
    return examples


def example_stem(source: Path | ExamplePhoto) -> str:
    """The file-name part that says which photo an example is."""
    return source.name if isinstance(source, ExamplePhoto) else source.stem


def load_pipeline(model: str | os.PathLike | None = None) -> COATAppearanceTransferPipeline:
    """The ``coat-appearance-transfer`` pipeline on ``model``: a bundled name, a folder or a Hub id; ``None``
    means the package's default model."""
    return pipeline(TASK, model=resolve_model(model))


NOT_UPLOADED = "{name}: only photos uploaded to this page can be used; please upload it again"
"""The one answer to every input that is not an upload (a server path, a URL, a folder, a missing file): it
says nothing about the server's files."""


def is_inside(path: str, folder: str | os.PathLike) -> bool:
    """Whether the resolved ``path`` lies below ``folder`` (resolved too)."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder and path != folder


class COATDemo:
    """The app's event handlers around one pipeline, and the page that wires them (:meth:`build`).

    Args:
        pipe: the pipeline that runs the transfers.
        input_folders: folders whose files the events accept besides Gradio's upload folder (the app's
            examples); any other path or URL a request names is refused.
    """

    def __init__(self, pipe: COATAppearanceTransferPipeline, input_folders: Sequence[str | os.PathLike] = ()) -> None:
        self.pipe = pipe
        self.config = pipe.model.config
        self.input_folders = list(input_folders)

    def load_input(self, value: Any, name: str) -> PIL.Image.Image:
        """An image input as the event receives it (a Gradio file payload, a path or a PIL image) -> the image.

        The events skip Gradio's own preprocessing so that a file that is not an image reaches
        :func:`coat_hf.image_io.load_image`, whose ``ValueError`` names the input, instead of failing in Gradio.
        So this is where a payload is checked: its file must be one Gradio stored for an upload (in
        ``gr.utils.get_upload_folder()``, which is where example files are copied as well) or lie in
        ``input_folders``. Anything else, a server path or URL a request names, gets :data:`NOT_UPLOADED`; and
        errors name the file, never its path on the server.
        """
        if value is None:
            raise ValueError(f"{name}: no image yet; upload, paste or take a photo")
        if isinstance(value, PIL.Image.Image):
            return load_image(value, name)
        path = value.get("path") if isinstance(value, dict) else value
        if not path:
            raise ValueError(f"{name}: the upload did not arrive; please try again")
        try:
            path = os.path.realpath(os.fspath(path))
            accepted = any(is_inside(path, folder) for folder in [gr.utils.get_upload_folder(), *self.input_folders])
        except (TypeError, ValueError):  # not a path at all, or one with a NUL byte
            accepted = False
        if not (accepted and os.path.isfile(path)):
            raise ValueError(NOT_UPLOADED.format(name=name))
        return load_image(path, name, label=Path(path).name)

    @property
    def num_modulation_layers(self) -> int:
        """K: the slider for n runs over 0..K."""
        return self.config.num_modulation_layers

    def scale_choices(self) -> list[tuple[str, str]]:
        """The correspondence scales, shallow to deep, labelled with their feature grids. The values are strings
        ("0", "1", ...), as Gradio's API advertises a dropdown's values; :func:`as_scale` reads them back."""
        sizes = self.config.feature_sizes
        return [(f"scale {scale}: {size}x{size} grid", str(scale)) for scale, size in enumerate(sizes)]

    def default_scale(self) -> str:
        """The scale the panel starts on: :func:`coat_hf.visualization.default_scale` of this model's grids."""
        return str(default_scale([{"scale": scale, "content_size": (size, size)}
                                  for scale, size in enumerate(self.config.feature_sizes)]))

    def transfer(self, content: Any, style: Any, n: Any, scale: Any, alignment: str | None = None,
                 color_match: bool = False, progress: gr.Progress = gr.Progress()
                 ) -> tuple[PIL.Image.Image, PIL.Image.Image, int, PIL.Image.Image]:
        """One transfer and its correspondence panel.

        Returns the result (at the content's size), the matches of ``scale`` drawn between content and style,
        their number (the confident set p of Eq. 3) and the confidence Q (Eq. 2) as a heatmap over the content
        (:data:`HEATMAP_HEIGHT` px high).
        """
        with shown_in_page():
            progress(0.1, desc="Loading the images")
            content = self.load_input(content, "content")
            style = self.load_input(style, "style")
            progress(0.3, desc="Transferring")
            scale = as_scale(scale)
            out = self.pipe(content, style, n=as_n(n), return_correspondence=True, correspondence_scale=scale,
                            seed=SEED, alignment=alignment or None, color_match=color_match)
            progress(0.9, desc="Drawing the correspondences")
            matches = out["correspondence"]["matches"]
            scale = default_scale(matches) if scale is None else scale
            size = (max(1, round(HEATMAP_HEIGHT * content.width / content.height)), HEATMAP_HEIGHT)
            heatmap = confidence_heatmap(matches, size, scale, image=content)
        return out["image"], out["correspondence"]["image"], matches[scale]["content_index"].numel(), heatmap

    def sweep(self, content: Any, style: Any, alignment: str | None = None, color_match: bool = False,
              progress: gr.Progress = gr.Progress()) -> list[tuple[PIL.Image.Image, str]]:
        """The result for every n in 0..K, captioned ``n = ...``: the most style at n = 0, the content at n = K."""
        with shown_in_page():
            content = self.load_input(content, "content")
            style = self.load_input(style, "style")
            k = self.num_modulation_layers
            strip = []
            for n in progress.tqdm(range(k + 1), desc="Sweeping n"):
                image = self.pipe(content, style, n=n, seed=SEED, alignment=alignment or None,
                                  color_match=color_match)["image"]
                strip.append((image, f"n = {n}"))
        return strip

    def build(self, examples: Sequence[Sequence[str]] = ()) -> gr.Blocks:
        """The page: inputs and result, the controls, the correspondence panel and the sweep strip."""
        k = self.num_modulation_layers
        with gr.Blocks(title="COAT: object appearance transfer") as demo:
            gr.Markdown(
                "# COAT: correspondence-driven object appearance transfer\n"
                "Re-render the **content** photo's object with the **style** photo's appearance "
                "(COAT, Jeon et al., BMVC 2022). The model matches the two "
                "images' features and moves the style's features onto the content by those matches (the "
                "**Alignment** control picks the rule); the panel below shows the confident (mutual) matches."
            )
            if is_untrained(self.pipe.model.name_or_path):
                gr.Markdown(f"**Note:** this server runs `{UNTRAINED_MODEL}`, an untrained placeholder: the "
                            "results show the app working, not a real transfer. Start it with `--model` to use "
                            "a trained model.")
            with gr.Row():
                content = gr.Image(label="Content", type="filepath", image_mode=None, elem_id="content",
                                   sources=["upload", "clipboard", "webcam"], height=PANEL_HEIGHT)
                style = gr.Image(label="Style", type="filepath", image_mode=None, elem_id="style",
                                 sources=["upload", "clipboard", "webcam"], height=PANEL_HEIGHT)
                result = gr.Image(label="Result", format="png", interactive=False, elem_id="result",
                                  height=PANEL_HEIGHT)
            with gr.Row():
                n = gr.Slider(0, k, value=self.config.default_n, step=1, precision=0, label=f"n (0 to {k})",
                              info=N_HELP, elem_id="n", scale=3)
                scale = gr.Dropdown(self.scale_choices(), value=self.default_scale(),
                                    label="Correspondence scale", elem_id="scale", scale=2)
                alignment = gr.Dropdown(list(ALIGNMENT_CHOICES), value=self.config.alignment, label="Alignment",
                                        info=ALIGNMENT_HELP, elem_id="alignment", scale=2)
                color_match = gr.Checkbox(False, label="Match the style's colours", info=COLOR_MATCH_HELP,
                                          elem_id="color_match", scale=1)
                with gr.Column(scale=1, min_width=160):
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    sweep = gr.Button("Sweep all n", elem_id="sweep")
            gr.Markdown("### Correspondences")
            with gr.Row():
                matches = gr.Image(label="Confident matches: content (left) and style (right)", format="png",
                                   interactive=False, elem_id="matches", scale=2, height=PANEL_HEIGHT)
                with gr.Column(scale=1):
                    heatmap = gr.Image(label="Match confidence Q over the content (bright = mutual)", format="png",
                                       interactive=False, elem_id="heatmap", height=PANEL_HEIGHT * 2 // 3)
                    count = gr.Number(label="Number of confident matches", precision=0, interactive=False,
                                      elem_id="count")
            strip = gr.Gallery(label="Sweep: the result for every n, from the most style (left) to the content",
                               columns=k + 1, rows=1, height=STRIP_HEIGHT, object_fit="contain", elem_id="strip")
            if examples:
                gr.Examples(examples, inputs=[content, style], label="Example pairs (content, style)")
            # preprocess=False: bad files reach the pipeline's loader, whose errors are readable (see load_input).
            run.click(self.transfer, [content, style, n, scale, alignment, color_match],
                      [result, matches, count, heatmap], api_name="transfer", preprocess=False)
            sweep.click(self.sweep, [content, style, alignment, color_match], strip, api_name="sweep",
                        preprocess=False)
        return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve COAT (object appearance transfer) in the browser.")
    parser.add_argument("--model", default=os.environ.get("COAT_MODEL"),
                        help="bundled model name, model folder or Hub id (default: $COAT_MODEL, else the bundled "
                             "default)")
    parser.add_argument("--examples", metavar="DIR",
                        help="folder of example pairs: a pairs.csv (content,style) or images taken two by two by name")
    parser.add_argument("--host", help="address to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    return parser.parse_args(argv)


def serve(page: gr.Blocks, host: str | None = None, port: int | None = None, **launch_kwargs: Any) -> gr.Blocks:
    """Queue requests one at a time (at most :data:`QUEUE_SIZE` waiting) and start the server.

    ``host``/``port`` of ``None`` leave the choice to Gradio: GRADIO_SERVER_NAME/GRADIO_SERVER_PORT, which
    Hugging Face Spaces sets, else 127.0.0.1 and the first free port from 7860.
    """
    page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, **launch_kwargs)
    return page


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (how Spaces and most supervisors stop a server) unwinds like Ctrl-C, so the examples' folder goes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="coat-examples-") as folder:
        try:
            examples = build_examples(folder, args.examples, args.model)
        except ValueError as err:
            raise SystemExit(f"app.py: {err}") from None
        demo = COATDemo(load_pipeline(args.model), input_folders=[folder])
        serve(demo.build(examples), args.host, args.port, share=args.share)


if __name__ == "__main__":
    main()
