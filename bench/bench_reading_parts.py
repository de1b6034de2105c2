"""What the parts of a reading cost: `python bench/bench_reading_parts.py [--model DIR]`.

On the 12 full-size sample films, one after another, on the machine it runs on:
- the steps of a single reading: decoding the JPEG at the dataset's scale (a reduced-scale
  decode shrunk to a shorter side of 256 px), framing (crop to the body, resize),
  histogram equalisation and the network's TensorFlow Lite forward pass;
- the detail levelling of the model's preprocessing (`normalize_detail`, its bands);
- `Predictor.predict` with the preprocessing blurs on one BLAS thread (as shipped) and with
  numpy's default, to show what the limit in `mlcore.preprocess.gaussian_blur` buys;
- the heatmap overlay (at most 1024 px, as the worker stores it) blended and encoded as PNG
  and as JPEG;
- the display image of an upload (at most 1600 px) as PNG and as JPEG, as
  `diagnoses.imaging` makes them.
Means per film in ms, and mean file sizes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import django
import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_inference import SAMPLES, percentile, timings_ms  # noqa: E402

from mlcore import preprocess  # noqa: E402
from mlcore.explain import GradCam, encode_overlay  # noqa: E402
from mlcore.imageio import decode_image  # noqa: E402
from mlcore.inference import Predictor  # noqa: E402


def mean_ms(function, items: list, rounds: int = 5) -> float:
    """Mean time per item of `function(item)`, over `rounds` passes after one warm-up pass."""
    values = timings_ms(lambda: [function(item) for item in items], rounds, warmup=1)
    return float(np.mean(values)) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="default: the newest folder under models/")
    parser.add_argument("--repeats", type=int, default=120)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pneumosite.settings")
    django.setup()  # for the sizes and encoders the site uses
    from diagnoses.imaging import DISPLAY_MAX_SIDE, _fit, display_file
    from diagnoses.services import HEATMAP_MAX_SIDE

    newest = sorted(path.parent for path in (REPO / "models").glob("*/model.json"))[-1]
    predictor = Predictor.load(args.model or newest)
    blobs = [path.read_bytes() for path in sorted(SAMPLES.glob("*/*.jpeg"))]
    films = [decode_image(blob) for blob in blobs]
    print(f"model `{predictor.version}`, {len(blobs)} sample films\n")
    print("| part | mean per film |\n|---|---:|")

    settings = predictor.preprocessing
    sources = [settings.source_film(blob) for blob in blobs]
    framed = [settings.framed(source)[0] for source in sources]
    if settings.normalization == "clahe":
        normalisation = ("CLAHE", lambda image: preprocess.clahe(np.asarray(image, np.uint8)))
    else:
        normalisation = ("histogram equalisation", ImageOps.equalize)
    equalised = [np.asarray(normalisation[1](image), np.uint8) for image in framed]
    inputs = [predictor.preprocess(blob)[np.newaxis] for blob in blobs]
    for part, function, items in (
        ("decoding the full-size JPEG at the dataset's scale", settings.source_film, blobs),
        ("framing: crop to the body (if the model does) and resize", settings.framed, sources),
        (normalisation[0], normalisation[1], framed),
        ("network forward pass, one image", predictor.probabilities, inputs),
    ):
        print(f"| {part} | {mean_ms(function, items):.2f} ms |")
    if settings.normalize_detail:
        bands = preprocess.DETAIL_BANDS[: settings.detail_bands]
        levelling = mean_ms(lambda pixels: preprocess.normalize_detail(pixels, bands), equalised)
        print(f"| detail levelling, {len(bands)} band(s) | {levelling:.2f} ms |")

    cycle = iter(range(10**9))
    for label, limit in (("one BLAS thread (shipped)", None), ("numpy's default", "off")):
        with contextlib.ExitStack() as stack:
            if limit == "off":
                stack.enter_context(_blas_limit_off())
            values = timings_ms(
                lambda: predictor.predict(blobs[next(cycle) % len(blobs)]), args.repeats
            )
        print(
            f"| `Predictor.predict`, blurs on {label}, p50 / p95 | "
            f"{percentile(values, 50):.2f} / {percentile(values, 95):.2f} ms |"
        )

    gradcam, overlays = GradCam(predictor.model), []
    for film, blob in zip(films, blobs, strict=True):
        base = film.copy()
        base.thumbnail((HEATMAP_MAX_SIDE, HEATMAP_MAX_SIDE), Image.Resampling.LANCZOS)
        overlays.append((base, gradcam(predictor.preprocess(blob))))
    for image_format in ("PNG", "JPEG"):
        encode = lambda item, f=image_format: encode_overlay(*item, None, f)  # noqa: E731
        size_kb = np.mean([len(encode(item)) for item in overlays]) / 1000
        print(
            f"| heatmap overlay at most {HEATMAP_MAX_SIDE} px, blended, as {image_format} "
            f"| {mean_ms(encode, overlays):.2f} ms, {size_kb:.0f} KB |"
        )

    # display_file shows a JPEG original as JPEG and any other (PNG, DICOM) as PNG.
    for source_format, shown_as in (("PNG", "PNG"), ("JPEG", "JPEG")):
        make = lambda film, s=source_format: display_file(film, s)  # noqa: E731
        size_kb = np.mean([len(make(film)[0]) for film in films]) / 1000
        print(
            f"| display image at most {DISPLAY_MAX_SIDE} px as {shown_as}, resize included "
            f"| {mean_ms(make, films):.2f} ms, {size_kb:.0f} KB |"
        )
    resize = mean_ms(lambda film: _fit(film, DISPLAY_MAX_SIDE), films)
    print(f"| of which the resize to at most {DISPLAY_MAX_SIDE} px | {resize:.2f} ms |")


@contextlib.contextmanager
def _blas_limit_off():
    """numpy's own BLAS threads for the blurs, as before the limit existed."""
    original = preprocess._BLAS
    preprocess._BLAS = _NoLimit()
    try:
        yield
    finally:
        preprocess._BLAS = original


class _NoLimit:
    def limit(self, **kwargs):
        return contextlib.nullcontext()


if __name__ == "__main__":
    main()
