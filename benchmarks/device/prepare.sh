#!/usr/bin/env bash
# Prepare what a lent GPU machine needs (it reaches no network and gets only the checkout, 64 MiB in all):
# wheels of the packages it lacks, the LPIPS AlexNet weights as float16, and the training photos pre-cropped to
# 128 px JPEGs (horse masks cropped alike, PNG), all under the git-ignored .gl/. Then run
# `bash benchmarks/device/session.sh` there with the parts of .gl it needs carried (README, "Training on a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${COAT_DATA_DIR:-../shared/data}
mkdir -p .gl/lpips
pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gl/whl lpips==0.1.4 datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19 importlib_metadata zipp
python -m coat_hf.lpips_weights --net alex
python - "$DATA" <<'PY'
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from coat_hf.lpips_weights import cache_dir

data = Path(sys.argv[1])
weights = load_file(cache_dir() / "alexnet.safetensors")
save_file({k: v.half() for k, v in weights.items()}, ".gl/lpips/alexnet.fp16.safetensors")


def crop(job):
    source, target, quality = job
    with Image.open(source) as image:
        ImageOps.fit(image.convert("RGB"), (128, 128), Image.BICUBIC).save(target, quality=quality)


def crop_mask(job):  # the mask at its photo's size first (it is stored smaller), then the photo's crop
    source, photo, target = job
    with Image.open(source) as mask, Image.open(photo) as image:
        mask = mask.convert("L").resize(image.size, Image.NEAREST)
        ImageOps.fit(mask, (128, 128), Image.NEAREST).save(target)


jobs = []
for name, files, quality in [("faces", sorted((data / "celeba/train").iterdir()), 85),
                             ("cats", sorted((data / "afhq_cat").iterdir())[:-300], 75),  # last 300 held out
                             ("horses/images", sorted((data / "horses/images").iterdir()), 85)]:  # the config
    Path(".gl", name).mkdir(parents=True, exist_ok=True)                                   # holds some out
    jobs += [(f, Path(".gl", name, f.stem + ".jpg"), quality) for f in files]
Path(".gl/horses/masks").mkdir(exist_ok=True)
masks = [(f, data / "horses/images" / f.name, Path(".gl/horses/masks", f.stem + ".png"))
         for f in sorted((data / "horses/masks").iterdir())]
with ProcessPoolExecutor(2) as pool:
    list(pool.map(crop, jobs, chunksize=64))
    list(pool.map(crop_mask, masks, chunksize=64))
PY
du -sh .gl/*
