"""Build the Fashion-MNIST sample bundled in rawgpu/data/sample/ (run once; the output is committed).

    python -m rawgpu.data.make_sample [--source /usr/share/datasets/fashion-mnist]

It reads the full Fashion-MNIST (any folder with the four standard files; by default the
Debian package ``dataset-fashion-mnist``), checks that the uncompressed files are the genuine
ones (SHA-256 below), picks a class-balanced subset with a fixed seed (300 train and 100 test
images per class by default, kept in their original order), and writes four gzip IDX files
plus LICENSE and README.md. The same source, counts and seed always pick the same images (and,
with the same zlib, give the same bytes: the gzip headers carry no name and no time).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from rawgpu.data.datasets import DEBIAN_FASHION_MNIST, SAMPLE_DIR, STANDARD_FILES, find_files
from rawgpu.data.idx import parse_idx, read_bytes, write_idx

# SHA-256 of the *uncompressed* Fashion-MNIST IDX files. Unlike the .gz digests they do not
# depend on who compressed the files: the same for the original downloads and for Debian's.
PAYLOAD_SHA256 = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

LICENSE = """\
The images and labels in this folder are a subset of Fashion-MNIST
(https://github.com/zalandoresearch/fashion-mnist), taken unmodified
(only a selection of the examples, re-encoded as gzip IDX files).
Fashion-MNIST is distributed under the MIT License:

The MIT License (MIT) Copyright \N{COPYRIGHT SIGN} 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files (the \N{LEFT DOUBLE QUOTATION MARK}Software\N{RIGHT DOUBLE QUOTATION MARK}), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED \N{LEFT DOUBLE QUOTATION MARK}AS IS\N{RIGHT DOUBLE QUOTATION MARK}, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` examples of every class, drawn without replacement, in ascending order."""
    picks = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} examples, fewer than {per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build(source: Path, out: Path, *, train_per_class: int, test_per_class: int, seed: int, command: str) -> list[Path]:
    files = find_files(source)
    arrays = {}
    for role, path in files.items():
        raw = read_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != PAYLOAD_SHA256[role]:
            raise SystemExit(f"{path}: uncompressed SHA-256 {digest} is not Fashion-MNIST's {PAYLOAD_SHA256[role]}; use the original files")
        arrays[role] = parse_idx(raw, path)

    rng = np.random.default_rng(seed)
    keep = {
        "train": balanced_subset(arrays["train_labels"], train_per_class, rng),
        "test": balanced_subset(arrays["test_labels"], test_per_class, rng),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for role, stem in STANDARD_FILES.items():
        split = role.split("_")[0]
        written.append(Path(write_idx(out / (stem + ".gz"), arrays[role][keep[split]])))

    digests = "\n".join(f"    {hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in written)
    n_train, n_test = len(keep["train"]), len(keep["test"])
    readme = f"""\
# Bundled Fashion-MNIST sample

{n_train} training and {n_test} test images of Fashion-MNIST (28x28 grayscale, uint8), {train_per_class}
and {test_per_class} per class, with their labels, as gzip IDX files with the standard names. `rawgpu`
trains on it when MNIST can neither be found in the cache nor downloaded (`rawgpu.data.load("sample")`).

How it was made: `{command}`
(rawgpu/data/make_sample.py) from the full Fashion-MNIST in `{source}`, after checking its four
files against the SHA-256 of the original uncompressed files: {train_per_class} training and
{test_per_class} test examples of every class drawn at random with `numpy.random.default_rng({seed})`,
kept in their original order.

Classes: {", ".join(f"{i} {name}" for i, name in enumerate(CLASSES))}.

SHA-256 of the files:

{digests}

Fashion-MNIST is Copyright 2017 Zalando SE and MIT licensed; see LICENSE in this folder.
"""
    _atomic_text(out / "README.md", readme)
    _atomic_text(out / "LICENSE", LICENSE)
    return written + [out / "README.md", out / "LICENSE"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST, help="folder with the full Fashion-MNIST")
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    command = "python -m rawgpu.data.make_sample" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in
        (("train_per_class", args.train_per_class), ("test_per_class", args.test_per_class), ("seed", args.seed))
    )
    for path in build(args.source, args.out, train_per_class=args.train_per_class,
                      test_per_class=args.test_per_class, seed=args.seed, command=command):
        print(f"{path.stat().st_size:>9} bytes  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
