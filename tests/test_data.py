"""The data layer: IDX files, folders of them, verified downloads, the bundled sample.

Downloads are tested against a local HTTP server on 127.0.0.1 serving small IDX files made here,
so nothing leaves the machine; the cache folder is a fresh temporary one in every test.
"""

import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from rawgpu import data
from rawgpu.data import datasets as ds_mod
from rawgpu.data import DataError, read_idx, write_idx

STEMS = list(data.STANDARD_FILES.values())


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder and no proxy between it and 127.0.0.1."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RAWGPU_CACHE_DIR", str(folder))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return folder


def small_split(rng, n, classes=10):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.uint8)
    return images, labels


def write_folder(folder, rng, *, n_train=20, n_test=10, gz=True):
    """The four standard files of a tiny dataset in ``folder``; returns the arrays by role."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    arrays["train_images"], arrays["train_labels"] = small_split(rng, n_train)
    arrays["test_images"], arrays["test_labels"] = small_split(rng, n_test)
    for role, stem in data.STANDARD_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[role])
    return arrays


def assert_one_line_naming(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg


# --------------------------------------------------------------------------------------------
# IDX files


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, rng, dtype, name):
    array = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    path = tmp_path / name
    write_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_idx_header_is_the_standard_one(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((70000, 28, 1), np.uint8))
    with open(path, "rb") as fh:  # type 0x08 (uint8), 3 dims, then the sizes big-endian
        assert fh.read(16).hex() == "00000803" + "00011170" + "0000001c" + "00000001"


def test_gzip_is_detected_by_content_not_name(tmp_path, rng):
    array = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "images", array, compress=True)  # gzip without a .gz name
    np.testing.assert_array_equal(read_idx(path), array)


def test_gz_name_that_is_not_gzip(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(10, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match="named .gz but is not gzip-compressed") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_corrupt_gzip(tmp_path, rng):
    path = Path(write_idx(tmp_path / "images.gz", rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # zero a stretch of the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="gzip") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_truncated_gzip(tmp_path, rng):
    path = Path(write_idx(tmp_path / "images.gz", rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="gzip stream ends early") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file(tmp_path, gz):
    payload = data.idx.encode_idx(np.zeros((10, 28, 28), np.uint8))[:-1]
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match=r"truncated IDX file: the header says 10x28x28 uint8 \(7840 data bytes\) but only 7839") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)
    assert "re-download it" in str(exc.value)


def test_truncated_header(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path, gz):
    payload = data.idx.encode_idx(np.zeros(10, np.uint8)) + b"junk"
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match="4 unexpected bytes after the data") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize(
    "header, message",
    [
        (bytes([0x50, 0x4B, 3, 4]), "not an IDX file: magic number 50 4b 03 04"),  # a zip file
        (bytes([0, 0, 0x07, 1]), "unknown element type 0x07"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
    ],
)
def test_wrong_magic_number(tmp_path, header, message):
    path = tmp_path / "labels"
    path.write_bytes(header + bytes(8))
    with pytest.raises(DataError, match=message) as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="too short to be an IDX file"):
        read_idx(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.uint8(3))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Folders of IDX files and the Dataset


@pytest.mark.parametrize("gz", [False, True])
def test_load_dir(tmp_path, rng, gz):
    arrays = write_folder(tmp_path / "d", rng, gz=gz)
    ds = data.load_dir(tmp_path / "d", name="tiny")
    for role, array in arrays.items():
        np.testing.assert_array_equal(getattr(ds, role), array)
    assert ds.name == "tiny" and ds.num_classes == 10 and str(tmp_path / "d") in ds.source
    same = data.load("whatever", data_dir=tmp_path / "d")  # with data_dir the name only labels it
    np.testing.assert_array_equal(same.test_labels, arrays["test_labels"])


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match="no such folder") as exc:
        data.load_dir(tmp_path / "nowhere")
    assert_one_line_naming(exc, tmp_path / "nowhere")
    assert "train-images-idx3-ubyte" in str(exc.value)


def test_missing_file(tmp_path, rng):
    write_folder(tmp_path / "d", rng)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]") as exc:
        data.load("mnist", data_dir=tmp_path / "d")
    assert_one_line_naming(exc, tmp_path / "d")


def test_count_mismatch(tmp_path, rng):
    write_folder(tmp_path / "d", rng)
    labels = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="has 20 images but .* has 19 labels") as exc:
        data.load_dir(tmp_path / "d")
    assert_one_line_naming(exc, labels)


def test_labels_outside_class_range(tmp_path, rng):
    write_folder(tmp_path / "d", rng)
    labels = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    bad = np.arange(10, dtype=np.uint8)
    bad[7] = 10
    write_idx(labels, bad)
    with pytest.raises(DataError, match=r"label 10 at index 7 .* outside 0\.\.9") as exc:
        data.load_dir(tmp_path / "d")
    assert_one_line_naming(exc, labels)


def test_images_file_holding_labels(tmp_path, rng):
    write_folder(tmp_path / "d", rng)
    images = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    write_idx(images, np.zeros(20, np.uint8))  # a 1-D file where images belong
    with pytest.raises(DataError, match="expected uint8 images") as exc:
        data.load_dir(tmp_path / "d")
    assert_one_line_naming(exc, images)


def test_prepare():
    images = np.array([[[0, 255], [51, 204]]], dtype=np.uint8)
    x = data.prepare(images)
    assert x.dtype == np.float32 and x.shape == (1, 4)
    np.testing.assert_allclose(x, [[-1.0, 1.0, -0.6, 0.6]], atol=1e-6)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar100'; choose one of mnist, fashion-mnist, cifar10, sample"):
        data.load("cifar100")


# --------------------------------------------------------------------------------------------
# Downloads from a local server


class _Server:
    """http.server on 127.0.0.1 (ephemeral port) serving ``files`` under /good/; /missing/ gives 404."""

    def __init__(self):
        self.files = {}
        self.requests = []
        self.short = set()  # names whose body is cut short (Content-Length promises more)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                prefix, _, name = self.path.rpartition("/")
                body = server.files.get(name) if prefix == "/good" else None
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in server.short else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def remote(tmp_path, rng, server):
    """A tiny dataset served at ``server.base + '/good/'``; returns (arrays, digests)."""
    arrays = write_folder(tmp_path / "served", rng)
    digests = {}
    for stem in STEMS:
        body = (tmp_path / "served" / (stem + ".gz")).read_bytes()
        server.files[stem + ".gz"] = body
        digests[stem + ".gz"] = hashlib.sha256(body).hexdigest()
    return arrays, digests


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there now: connection refused


def all_files(folder: Path):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_then_cache_hit(server, remote, cache, capsys):
    arrays, digests = remote
    ds = data.load("mnist", mirrors=[server.base + "/good/"], digests=digests)
    np.testing.assert_array_equal(ds.train_images, arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert len(server.requests) == 4
    assert all_files(cache) == sorted(s + ".gz" for s in STEMS)  # nothing else: no .part files
    assert "downloading train-images-idx3-ubyte.gz" in capsys.readouterr().err
    assert data.is_cached("mnist")

    again = data.load("mnist", mirrors=[server.base + "/good/"], digests=digests)
    assert len(server.requests) == 4  # served from the cache, no request
    assert str(cache / "mnist") in again.source
    np.testing.assert_array_equal(again.train_labels, arrays["train_labels"])


def test_sha256_mismatch_leaves_nothing(server, remote, cache):
    _, digests = remote
    wrong = dict(digests, **{"train-images-idx3-ubyte.gz": "0" * 64})
    with pytest.raises(DataError, match="cannot download train-images-idx3-ubyte.gz .*SHA-256 mismatch") as exc:
        data.load("mnist", mirrors=[server.base + "/good/"], digests=wrong, progress=False)
    assert "\n" not in str(exc.value)
    assert all_files(cache) == []  # not the file, not a temporary file
    assert not (cache / "mnist").exists()  # not even the folder made for it


def test_short_transfer_leaves_nothing(server, remote, cache):
    _, digests = remote
    server.short.add("train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist", mirrors=[server.base + "/good/"], digests=digests, progress=False)
    assert all_files(cache) == []


def test_failed_mirrors_fall_back_to_the_next(server, remote, cache):
    arrays, digests = remote
    mirrors = [closed_port_url(), server.base + "/missing/", server.base + "/good/"]
    ds = data.load("mnist", mirrors=mirrors, digests=digests, progress=False)
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    assert "/missing/train-images-idx3-ubyte.gz" in server.requests
    assert all_files(cache) == sorted(s + ".gz" for s in STEMS)


def test_all_mirrors_failing(server, remote, cache):
    _, digests = remote
    refused = closed_port_url()
    with pytest.raises(DataError) as exc:
        data.load("mnist", mirrors=[refused, server.base + "/missing/"], digests=digests, progress=False)
    msg = str(exc.value)
    assert msg.startswith("MNIST: cannot download train-images-idx3-ubyte.gz") and "\n" not in msg
    assert refused in msg and "HTTP 404" in msg
    assert all_files(cache) == []


def test_no_download_when_told_not_to(server, remote, cache):
    _, digests = remote
    with pytest.raises(DataError, match="not in the cache .* downloading is off"):
        data.load("mnist", mirrors=[server.base + "/good/"], digests=digests, download=False)
    assert server.requests == [] and not data.is_cached("mnist")


def test_damaged_cache_file_is_replaced(server, remote, cache):
    arrays, digests = remote
    good = [server.base + "/good/"]
    data.load("mnist", mirrors=good, digests=digests, progress=False)
    damaged = cache / "mnist" / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"\x1f\x8b not really")
    with pytest.raises(DataError, match="SHA-256 does not match") as exc:
        data.load("mnist", mirrors=good, digests=digests, download=False)
    assert_one_line_naming(exc, damaged)
    ds = data.load("mnist", mirrors=good, digests=digests, progress=False)
    assert server.requests.count("/good/t10k-labels-idx1-ubyte.gz") == 2
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])


def test_fashion_mnist_downloads_without_the_debian_package(server, remote, cache, tmp_path, monkeypatch):
    arrays, digests = remote
    monkeypatch.setattr(ds_mod, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    assert not data.is_cached("fashion-mnist")
    ds = data.load("fashion-mnist", mirrors=[server.base + "/good/"], digests=digests, progress=False)
    assert ds.name == "fashion-mnist" and str(cache / "fashion-mnist") in ds.source
    np.testing.assert_array_equal(ds.test_images, arrays["test_images"])


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("RAWGPU_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert data.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("RAWGPU_CACHE_DIR")
    assert data.cache_dir() == tmp_path / "b" / "rawgpu"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "rawgpu"


def test_published_digests_are_well_formed():
    for remote in (data.MNIST, data.FASHION_MNIST):
        assert sorted(remote.files) == sorted(s + ".gz" for s in STEMS)
        for sha, size in remote.files.values():
            assert len(sha) == 64 and int(sha, 16) >= 0 and size > 0
        assert remote.mirrors and all(m.endswith("/") for m in remote.mirrors)


# --------------------------------------------------------------------------------------------
# Real data: the bundled sample and Debian's Fashion-MNIST


def test_bundled_sample():
    assert data.is_cached("sample")
    ds = data.load("sample")
    assert ds.train_images.shape == (3000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert ds.train_images.dtype == np.uint8
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [300] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10
    assert "Fashion-MNIST sample" in ds.source
    x = data.prepare(ds.train_images)
    assert x.dtype == np.float32 and x.shape == (3000, 784)
    assert x.min() == -1.0 and x.max() == 1.0
    for name in ("LICENSE", "README.md"):
        assert (data.SAMPLE_DIR / name).is_file()
    assert "Zalando SE" in (data.SAMPLE_DIR / "LICENSE").read_text(encoding="utf-8")


def test_bundled_sample_matches_its_readme():
    readme = (data.SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    for stem in STEMS:
        path = data.SAMPLE_DIR / (stem + ".gz")
        assert f"{data.sha256_file(path)}  {path.name}" in readme


@pytest.mark.skipif(
    not all((ds_mod.DEBIAN_FASHION_MNIST / (s + ".gz")).is_file() for s in STEMS),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist(cache):
    ds = data.load("fashion-mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert "Debian" in ds.source and all_files(cache) == []
