"""The Gradio app (app.py): its functions directly, then the running server through gradio_client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import pytest

from conftest import make_shape_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app.py sits at the repository root (Spaces' app_file), beside the package

import app  # noqa: E402
from coat_hf.image_io import MAX_IMAGE_PIXELS, load_image  # noqa: E402
from coat_hf.pretrained import UNTRAINED_MODEL, available_models, default_model, resolve_model  # noqa: E402
from coat_hf.pretrained.examples import model_examples  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_photo(path: Path, seed: int, size: int = 64) -> Path:
    """A drawn picture (see conftest.make_shape_image) saved as a file, as a browser or client would upload it."""
    make_shape_image(size, seed).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("photos")
    return save_photo(folder / "content.png", 1), save_photo(folder / "style.png", 2, size=48)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> app.COATDemo:
    """The handlers called directly, on files the tests write (the running server accepts only uploads)."""
    return app.COATDemo(app.load_pipeline(UNTRAINED_MODEL), input_folders=[tmp_path_factory.getbasetemp()])


# --- the functions ------------------------------------------------------------------------------------------


def test_transfer_returns_result_and_correspondence_panel(demo, photos):
    content, style = photos
    k = demo.num_modulation_layers
    for scale in range(demo.config.num_scales):
        result, matches, count, heatmap = demo.transfer(str(content), str(style), k // 2, scale)
        assert result.size == (64, 64)  # the content's size
        assert heatmap.size == (app.HEATMAP_HEIGHT, app.HEATMAP_HEIGHT) and heatmap.mode == "RGB"
        assert matches.width > matches.height  # content and style side by side
        # The count is the confident set p of Eq. 3 at that scale, as the model itself finds it.
        pixels = demo.pipe.image_processor([load_image(content), load_image(style)], return_tensors="pt")
        out = demo.pipe.model(*pixels["pixel_values"].split(1), output_correspondence=True)
        assert count == int(out.correspondences[scale].mutual.sum()) > 0


def test_transfer_depends_on_n_and_is_reproducible(demo, photos):
    content, style = (str(p) for p in photos)
    k = demo.num_modulation_layers
    most_style = np.asarray(demo.transfer(content, style, 0, 0)[0])
    nearest = np.asarray(demo.transfer(content, style, 0, 0, "nearest")[0])
    assert not np.array_equal(most_style, nearest)  # the alignment dropdown reaches the model
    content_only = np.asarray(demo.transfer(content, style, k, 0)[0])
    assert not np.array_equal(most_style, content_only)
    assert np.array_equal(content_only, np.asarray(demo.transfer(content, style, float(k), 0)[0]))
    matched = demo.transfer(content, style, 0, 0, None, True)[0]  # the colour-match checkbox reaches the pipeline
    expected = demo.pipe(content, style, n=0, seed=app.SEED, color_match=True)["image"]
    assert np.array_equal(np.asarray(matched), np.asarray(expected)) and not np.array_equal(np.asarray(matched), most_style)
    with pytest.raises(gr.Error, match="color_match must be True or False"):
        demo.transfer(content, style, 0, 0, None, "yes")


def test_transfer_accepts_gradio_payloads(demo, photos):
    content, style = photos
    payload = {"path": str(content), "meta": {"_type": "gradio.FileData"}}
    from_payload = demo.transfer(payload, {"path": str(style)}, 2, 1)
    from_paths = demo.transfer(str(content), str(style), 2, 1)
    assert np.array_equal(np.asarray(from_payload[0]), np.asarray(from_paths[0]))
    assert from_payload[2] == from_paths[2]


def test_only_uploaded_files_are_accepted_and_refusals_reveal_nothing(demo, photos, tmp_path, monkeypatch):
    """Gradio's upload folder (and the app's own folders) only: a server path, a URL, a folder, a missing file,
    a ``..`` or a link out of the upload folder all get the same answer, which names no path."""
    uploads = tmp_path / "uploads"
    (uploads / "hash").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    server_side = app.COATDemo(demo.pipe)
    uploaded = save_photo(uploads / "hash" / "photo.png", 1)
    (uploads / "hash" / "link.png").symlink_to(photos[0])
    refused = ["/etc/shadow", "/nonexistent/x", "/root", "/", str(photos[0]), "http://127.0.0.1:9/x.png",
               f"{uploads}/hash/../../{photos[0].parent.name}/{photos[0].name}", str(uploads / "hash" / "link.png"),
               str(uploads / "hash" / "missing.png"), str(uploads / "hash"), "photo.png", "a\0b"]
    answers = set()
    for path in refused:
        for value in ({"path": path}, {"path": path, "meta": {"_type": "gradio.FileData"}}, path):
            with pytest.raises(gr.Error) as err:
                server_side.transfer(value, str(uploaded), 1, 0)
            answers.add(err.value.message)
    assert answers == {app.NOT_UPLOADED.format(name="content")}
    assert "/" not in answers.pop()
    for value in (None, {"path": ""}, {"url": "x"}):
        with pytest.raises(gr.Error) as err:
            server_side.sweep(str(uploaded), value)
        assert err.value.message.startswith("style: ")
    result = server_side.transfer({"path": str(uploaded)}, str(uploaded), 1, 0)
    assert np.array_equal(np.asarray(result[0]), np.asarray(demo.transfer(str(uploaded), str(uploaded), 1, 0)[0]))
    # An uploaded file that is not an image: the error names the file, not where the server keeps it.
    (uploads / "hash" / "notes.png").write_text("not a photo")
    with pytest.raises(gr.Error) as err:
        server_side.transfer(str(uploads / "hash" / "notes.png"), str(uploaded), 1, 0)
    assert err.value.message == "content: notes.png is not an image PIL can read"


def test_sweep_renders_every_n(demo, photos):
    content, style = (str(p) for p in photos)
    k = demo.num_modulation_layers
    strip = demo.sweep(content, style)
    assert [caption for _, caption in strip] == [f"n = {n}" for n in range(k + 1)]
    for n in (0, k):  # the strip shows exactly what "Run" shows for that n
        assert np.array_equal(np.asarray(strip[n][0]), np.asarray(demo.transfer(content, style, n, 0)[0]))
    matched = demo.sweep(content, style, None, True)
    assert np.array_equal(np.asarray(matched[0][0]), np.asarray(demo.transfer(content, style, 0, 0, None, True)[0]))


def test_bad_input_becomes_a_readable_page_error(demo, photos, tmp_path):
    content, style = (str(p) for p in photos)
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (8000, MAX_IMAGE_PIXELS // 8000 + 1)).save(huge)  # small file, too many pixels
    cases = [
        ((str(text), style, 1, 0), "content: "),
        ((content, str(huge), 1, 0), "style: "),
        ((None, style, 1, 0), "content: no image"),
        ((content, style, demo.num_modulation_layers + 1, 0), "n must be an integer"),
        ((content, style, 1, 99), "correspondence_scale"),
    ]
    for args, message in cases:
        with pytest.raises(gr.Error) as err:
            demo.transfer(*args)
        assert message in err.value.message
    with pytest.raises(gr.Error, match="content: "):
        demo.sweep(str(text), style)


def test_page_has_the_controls(demo):
    k = demo.num_modulation_layers
    page = demo.build()
    by_id = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    slider = by_id["n"]
    assert (slider.minimum, slider.maximum, slider.step, slider.value) == (0, k, 1, demo.config.default_n)
    assert "lower n = more of the style" in slider.info.lower()
    assert [value for _, value in by_id["scale"].choices] == [str(s) for s in range(demo.config.num_scales)]
    for name in ("content", "style"):
        assert set(by_id[name].sources) == {"upload", "clipboard", "webcam"}
    assert {"result", "matches", "heatmap", "count", "strip", "run", "sweep"} <= set(by_id)
    assert {"transfer", "sweep"} <= {fn.api_name for fn in page.fns.values()}


def test_default_model_is_the_bundled_default():
    pipe = app.load_pipeline()
    assert Path(pipe.model.name_or_path) == Path(resolve_model(default_model()))
    assert default_model() in available_models()


# --- examples -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, names", [
    ("coat-celeba-128", [("grace-hopper", "astronaut"), ("astronaut", "grace-hopper")]),
    ("coat-afhq-cat-128", [("chelsea", "cheetah"), ("cheetah", "chelsea"), ("cheetah-cub", "chelsea")]),
])
def test_each_model_shows_examples_of_its_category(tmp_path, model, names):
    """Faces for the face model, cats for the cat model: photos installed packages ship, cropped as listed."""
    pytest.importorskip("skimage")
    pairs = model_examples(model)
    assert [(c.name, s.name) for c, s in pairs] == names
    assert all(REPO not in p.path.parents for pair in pairs for p in pair)
    examples = app.build_examples(tmp_path / "out", model=model)
    assert len(examples) == len(pairs)
    for (content, style), (content_png, style_png) in zip(pairs, examples):
        assert Path(content_png).name.endswith(f"content-{content.name}.png")
        for path in (content_png, style_png):
            assert Path(path).parent == tmp_path / "out"
            assert PIL.Image.open(path).size == (app.EXAMPLE_SIZE, app.EXAMPLE_SIZE)
    assert model_examples(model)[0][0].load().size == tuple(
        b - a for a, b in zip(pairs[0][0].crop[:2], pairs[0][0].crop[2:]))


def test_examples_file_rules(tmp_path):
    """A model folder's examples.json: photos of packages that are not installed are left out, paths may not leave
    the package, and a folder without the file has no examples."""
    assert model_examples(tmp_path) == []
    (tmp_path / "examples.json").write_text(json.dumps({
        "photos": {"hopper": {"package": "matplotlib", "file": "mpl-data/sample_data/grace_hopper.jpg"},
                   "ghost": {"package": "no_such_package_here", "file": "a.png"},
                   "gone": {"package": "matplotlib", "file": "mpl-data/no_such_photo.jpg"}},
        "pairs": [["hopper", "ghost"], ["hopper", "hopper"], ["gone", "hopper"]]}))
    (pair,) = model_examples(tmp_path)
    assert pair[0].name == pair[1].name == "hopper" and pair[0].crop is None
    (tmp_path / "examples.json").write_text(json.dumps({
        "photos": {"up": {"package": "matplotlib", "file": "../matplotlib/__init__.py"}}, "pairs": []}))
    with pytest.raises(ValueError, match="must be a path inside the package"):
        model_examples(tmp_path)


def test_examples_from_a_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c.png", "d.png", "e.png"]):
        save_photo(folder / name, i)
    (folder / "readme.txt").write_text("not a photo")
    assert [(c.name, s.name) for c, s in app.folder_pairs(folder)] == [("a.png", "b.jpg"), ("c.png", "d.png")]

    (folder / "pairs.csv").write_text("content,style\ne.png,a.png\nc.png,missing.png\n")
    assert [(c.name, s.name) for c, s in app.folder_pairs(folder)] == [("e.png", "a.png"), ("c.png", "missing.png")]
    examples = app.build_examples(tmp_path / "out", folder)  # the unreadable pair is skipped, with a warning
    assert len(examples) == 1 + len(model_examples())
    assert Path(examples[0][0]).name == "00-content-e.png" and Path(examples[0][1]).name == "00-style-a.png"

    (folder / "pairs.csv").write_text("first,second\ne.png,a.png\n")
    with pytest.raises(ValueError, match=r"--examples: .* needs the columns content,style\[,output\]"):
        app.folder_pairs(folder)
    (folder / "pairs.csv").write_text("content,style\n")  # the rules of coat-transfer --pairs
    with pytest.raises(ValueError, match="--examples: .* has no pairs"):
        app.folder_pairs(folder)
    with pytest.raises(ValueError, match="--examples: not a folder"):
        app.folder_pairs(folder / "nope")


# --- command line -------------------------------------------------------------------------------------------


def test_command_line(monkeypatch):
    monkeypatch.delenv("COAT_MODEL", raising=False)
    args = app.parse_args([])
    assert (args.model, args.examples, args.host, args.port, args.share) == (None, None, None, None, False)
    monkeypatch.setenv("COAT_MODEL", "/models/mine")
    assert app.parse_args([]).model == "/models/mine"
    args = app.parse_args(["--model", "other", "--port", "8000", "--host", "0.0.0.0", "--share", "--examples", "x"])
    assert (args.model, args.port, args.host, args.share, args.examples) == ("other", 8000, "0.0.0.0", True, "x")


def test_main_removes_its_examples_folder(demo, tmp_path, monkeypatch):
    """Each start writes the examples into a fresh temporary folder, accepted as input while the app runs and
    removed when it stops (also on SIGTERM, see test_python_app_py_binds_where_spaces_says)."""
    monkeypatch.setattr(app.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(app, "load_pipeline", lambda model: demo.pipe)
    served = []

    def serve(page, host, port, **kwargs):
        folder = next(tmp_path.glob("coat-examples-*"))
        served.append((folder, sorted(p.name for p in folder.iterdir())))

    monkeypatch.setattr(app, "serve", serve)
    monkeypatch.setattr(app.signal, "signal", lambda signum, handler: None)  # main's SIGTERM handler: not in pytest
    app.main([])
    (folder, files), = served
    assert len(files) == 2 * len(model_examples()) > 0
    assert not folder.exists() and list(tmp_path.glob("coat-examples-*")) == []


# --- the running server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    """The app as ``main`` serves it: it accepts uploads and its own examples, not the tests' files."""
    examples = tmp_path_factory.mktemp("examples")
    page = app.serve(app.COATDemo(demo.pipe, input_folders=[examples]).build(app.build_examples(examples)),
                     "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    yield page
    page.close()


@pytest.fixture
def loopback_server(monkeypatch):
    """An HTTP server on 127.0.0.1 that answers every GET with a PNG and counts the requests."""
    import http.server
    import threading

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = (REPO / "tests" / "conftest.py").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def call_api(server, *data) -> str:
    """POST ``data`` to /gradio_api/call/transfer as any HTTP client can; returns the event stream's text."""
    import json

    request = urllib.request.Request(f"{server.local_url}gradio_api/call/transfer", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{server.local_url}gradio_api/call/transfer/{event}", timeout=120) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_server_queue_is_bounded(server):
    assert server._queue.max_size == app.QUEUE_SIZE


def test_client_predicts_at_both_ends_of_the_slider(client, demo, photos):
    from gradio_client import handle_file

    content, style = photos
    k = demo.num_modulation_layers
    results = {}
    for n in (0, k):
        result, matches, count, heatmap = client.predict(handle_file(str(content)), handle_file(str(style)), n, 1,
                                                         api_name="/transfer")
        assert PIL.Image.open(result).size == (64, 64)
        assert PIL.Image.open(heatmap).size == (app.HEATMAP_HEIGHT, app.HEATMAP_HEIGHT)
        assert PIL.Image.open(matches).width > PIL.Image.open(matches).height
        assert count == demo.transfer(str(content), str(style), n, 1)[2] > 0
        results[n] = np.asarray(PIL.Image.open(result).convert("RGB"))
        assert np.array_equal(results[n], np.asarray(demo.transfer(str(content), str(style), n, 1)[0]))
    assert not np.array_equal(results[0], results[k])


def test_client_accepts_the_advertised_scales(client, demo, photos):
    """Every scale value that the API advertises (view_api) is accepted, as the string it advertises."""
    from gradio_client import handle_file

    info = client.view_api(return_format="dict", print_info=False)
    scale = next(p for p in info["named_endpoints"]["/transfer"]["parameters"] if p["parameter_name"] == "scale")
    advertised = scale["type"]["enum"]
    assert advertised == [str(s) for s in range(demo.config.num_scales)] and scale["type"]["type"] == "string"
    assert scale["python_type"]["type"] == "Literal[" + ", ".join(f"'{s}'" for s in advertised) + "]"
    content, style = (str(p) for p in photos)
    for value in advertised:
        count = client.predict(handle_file(content), handle_file(style), 1, value, api_name="/transfer")[2]
        assert count == demo.transfer(content, style, 1, int(value))[2] == demo.transfer(content, style, 1, value)[2]


def test_client_sweep(client, demo, photos):
    from gradio_client import handle_file

    strip = client.predict(handle_file(str(photos[0])), handle_file(str(photos[1])), api_name="/sweep")
    assert len(strip) == demo.num_modulation_layers + 1
    assert strip[0]["caption"] == "n = 0" and PIL.Image.open(strip[0]["image"]).size == (64, 64)


def test_http_api_refuses_server_paths_and_urls(server, client, photos, loopback_server):
    """Payloads that name a file on the server or a URL, through the bare HTTP API and through gradio_client:
    one refusal for all, nothing about the server in it, and the server fetches nothing."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, requests = loopback_server
    meta = {"_type": "gradio.FileData"}
    payloads = [{"path": path} for path in ("/etc/shadow", "/nonexistent/x", "/root", str(photos[0]), f"{url}/x.png")]
    payloads += [{"path": "/etc/shadow", "meta": meta}, {"path": f"{url}/x.png", "meta": meta}, "/etc/shadow"]
    uploaded = client.predict(handle_file(str(photos[0])), handle_file(str(photos[1])), 1, 0, api_name="/transfer")
    assert uploaded[2] > 0
    answers = set()
    for payload in payloads:
        text = call_api(server, payload, payload, 1, 0)
        assert text.startswith("event: error"), text
        answers.add(text.split("data: ", 1)[1].strip())
        with pytest.raises(AppError) as err:
            client.predict(payload, handle_file(str(photos[1])), 1, 0, api_name="/transfer")
        answers.add(str(err.value))
    for answer in answers:  # Gradio's own refusals (payloads with meta) say nothing at all
        assert not any(word in answer for word in ("/etc", "/root", "nonexistent", "/tmp", str(photos[0].parent),
                                                   "127.0.0.1", "refused", "found", "directory"))
    assert any(app.NOT_UPLOADED.format(name="content") in answer for answer in answers)
    assert requests == []


def test_client_sees_readable_errors_and_the_server_keeps_serving(client, photos, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(AppError, match="^content: notes.txt is not an image PIL can read$"):  # no server path
        client.predict(handle_file(str(text)), handle_file(str(photos[1])), 1, 0, api_name="/transfer")
    huge = tmp_path / "huge.png"
    PIL.Image.new("1", (8000, MAX_IMAGE_PIXELS // 8000 + 1)).save(huge)
    with pytest.raises(AppError, match="style: the image is 8000x.* above the limit"):
        client.predict(handle_file(str(photos[0])), handle_file(str(huge)), 1, 0, api_name="/transfer")
    count = client.predict(handle_file(str(photos[0])), handle_file(str(photos[1])), 1, 0, api_name="/transfer")[2]
    assert count > 0


@pytest.mark.slow
def test_python_app_py_binds_where_spaces_says(tmp_path):
    """``python app.py`` as Spaces runs it: host and port from GRADIO_SERVER_NAME/GRADIO_SERVER_PORT."""
    port = free_port()
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "COAT_MODEL": UNTRAINED_MODEL, "GRADIO_TEMP_DIR": str(tmp_path), "TMPDIR": str(temp)}
    log = tmp_path / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    config = response.read().decode()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"app.py did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        assert "Sweep all n" in config and "lower n = more of the style" in config.lower()
        assert len(list(temp.glob("coat-examples-*"))) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert list(temp.glob("coat-examples-*")) == []  # SIGTERM removed the examples' folder


# --- Spaces ---------------------------------------------------------------------------------------------------


def imported_distributions(entry: Path) -> set[str]:
    """Distributions (normalised names) that ``entry`` and the coat_hf modules it reaches import, at top level or
    inside functions, standard library aside. An import inside ``try: ... except ImportError`` is an optional
    extra (its handler names the extra) and is not followed."""
    import ast
    import importlib.metadata

    from packaging.utils import canonicalize_name

    def module_path(name: str) -> Path | None:
        base = REPO.joinpath(*name.split("."))
        return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)

    providers = importlib.metadata.packages_distributions()
    modules, seen, todo = set(), set(), [("", entry)]
    while todo:
        package, path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try)
                    and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                            for h in node.handlers)
                    for statement in node.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *filter(None, [node.module])])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "coat_hf":
                    modules.add(name.split(".")[0])
                elif (found := module_path(name)) is not None:
                    todo.append((name if found.name == "__init__.py" else name.rpartition(".")[0], found))
    modules -= set(sys.stdlib_module_names) | {"coat_hf", ""}
    return {canonicalize_name(dist) for module in modules for dist in providers[module]}


def test_spaces_requirements_cover_what_the_app_imports():
    """requirements.txt installs everything app.py and the coat_hf modules it reaches import (gradio comes with
    the Spaces SDK), with pyproject.toml's version bounds, and nothing the app does not use."""
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (REPO / "requirements.txt").read_text().splitlines()
    required = {canonicalize_name(r.name): r.specifier
                for r in (Requirement(line) for line in lines if line.strip() and not line.startswith("#"))}
    photo_packages = {canonicalize_name(dist) for table in (REPO / "coat_hf/pretrained").glob("*/examples.json")
                      for photo in json.loads(table.read_text())["photos"].values()
                      for dist in importlib.metadata.packages_distributions()[photo["package"]]}  # the examples' photos
    used = (imported_distributions(REPO / "app.py") | photo_packages) - {"gradio"}
    assert used - set(required) == set(), "requirements.txt lacks these"
    assert set(required) - used == set(), "requirements.txt installs these, which the app does not import"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    bounds = {canonicalize_name(r.name): r.specifier for r in map(Requirement, requirements)}
    assert {name: spec for name, spec in required.items() if name in bounds and bounds[name] != spec} == {}
