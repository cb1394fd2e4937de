"""CIFAR-10's binary format: the reader, its refusals, the verified download, ``data.load``.

Everything runs on tiny synthetic batches (20 training and 10 test records per file instead of
10000) written here; the download is served from 127.0.0.1 by the same little server the MNIST
tests use, with the served archive's digest patched in.
"""

import gzip
import hashlib
import io
import tarfile
import time

import numpy as np
import pytest

from rawgpu import data
from rawgpu.data import DataError, cifar
from test_data import _Server, all_files, closed_port_url

N_TRAIN, N_TEST = 20, 10  # records per training batch file, in the test file


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder and no proxy between it and 127.0.0.1."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RAWGPU_CACHE_DIR", str(folder))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return folder


def make_batches(rng):
    """file name -> (images (N, 3, 32, 32) uint8, labels (N,) uint8) for the six batch files."""
    out = {}
    for name in cifar.BATCH_FILES:
        n = N_TEST if name == cifar.TEST_FILE else N_TRAIN
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        out[name] = images, rng.integers(0, 10, size=n).astype(np.uint8)
    return out


def expected(batches):
    """The four arrays the reader must return for ``batches``: flattened channel-major, train in file order."""
    flat = lambda name: batches[name][0].reshape(len(batches[name][0]), -1)  # noqa: E731
    return {
        "train_images": np.concatenate([flat(f) for f in cifar.TRAIN_FILES]),
        "train_labels": np.concatenate([batches[f][1] for f in cifar.TRAIN_FILES]),
        "test_images": flat(cifar.TEST_FILE),
        "test_labels": batches[cifar.TEST_FILE][1],
    }


def write_bins(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        (folder / name).write_bytes(cifar.encode_batch(images, labels))
    return folder


def tar_bytes(members) -> bytes:
    """A tar.gz holding ``members``: (name, bytes) pairs, in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def official_layout(batches):
    """The members of the official archive: the six batches in cifar-10-batches-bin/, plus its two extras."""
    members = [(f"{cifar.ARCHIVE_FOLDER}/batches.meta.txt", b"airplane\nautomobile\n")]
    members += [(f"{cifar.ARCHIVE_FOLDER}/{name}", cifar.encode_batch(*batches[name])) for name in cifar.BATCH_FILES]
    members.append((f"{cifar.ARCHIVE_FOLDER}/readme.html", b"<html></html>"))
    return members


def gz_of_header(name, size) -> bytes:
    """A gzip stream holding only one tar header that declares ``size`` bytes: the start of a tar bomb."""
    info = tarfile.TarInfo(name)
    info.size = size
    return gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(512))


def assert_one_line_naming(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, msg


def check_dataset(ds, batches, name="cifar10"):
    for role, array in expected(batches).items():
        got = getattr(ds, role)
        assert got.dtype == np.uint8, role
        np.testing.assert_array_equal(got, array, err_msg=role)
    assert ds.train_images.shape == (5 * N_TRAIN, 3072) and ds.test_images.shape == (N_TEST, 3072)
    assert ds.name == name and ds.num_classes == 10


# --------------------------------------------------------------------------------------------
# The reader


def test_record_layout_is_label_then_channel_major_pixels():
    image = np.zeros((3, 32, 32), np.uint8)
    image[0, 0, 1], image[1, 0, 0], image[2, 31, 31] = 11, 22, 33  # red (0,1), green (0,0), blue (31,31)
    raw = cifar.encode_batch(image[None], [7])
    assert len(raw) == 3073 and raw[0] == 7
    assert raw[1 + 1] == 11 and raw[1 + 1024] == 22 and raw[1 + 3 * 1024 - 1] == 33
    images, labels = cifar.parse_batch(raw)
    assert images.shape == (1, 3072) and labels.tolist() == [7]
    np.testing.assert_array_equal(images[0].reshape(3, 32, 32), image)


def test_folder_of_bins(tmp_path, rng):
    batches = make_batches(rng)
    folder = write_bins(tmp_path / "d", batches)
    ds = data.load("cifar10", data_dir=folder)
    check_dataset(ds, batches)
    assert str(folder) in ds.source
    assert sorted(ds.files) == sorted(f.removesuffix(".bin") for f in cifar.BATCH_FILES)
    # The network's input: 3072 float32 values per image, scaled like MNIST's.
    x = data.prepare(ds.train_images)
    assert x.shape == (5 * N_TRAIN, 3072) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("name", [None, "custom", "CIFAR_10"])
def test_folder_of_bins_is_recognised_without_the_name(tmp_path, rng, name):
    batches = make_batches(rng)
    folder = write_bins(tmp_path / "d", batches)
    ds = data.load(name, data_dir=folder)
    check_dataset(ds, batches, name="cifar10" if name == "CIFAR_10" else name or "custom")


def test_extracted_archive_folder(tmp_path, rng):
    # `tar xzf cifar-10-binary.tar.gz` in DIR makes DIR/cifar-10-batches-bin/: DIR is enough.
    batches = make_batches(rng)
    write_bins(tmp_path / "d" / cifar.ARCHIVE_FOLDER, batches)
    check_dataset(data.load("cifar10", data_dir=tmp_path / "d"), batches)
    check_dataset(data.load(data_dir=tmp_path / "d"), batches, name="custom")


def test_archive_in_a_folder_or_named_itself(tmp_path, rng):
    batches = make_batches(rng)
    members = official_layout(batches)
    members.insert(0, members.pop(4))  # any member order will do
    archive = tmp_path / "d" / cifar.ARCHIVE
    archive.parent.mkdir()
    archive.write_bytes(tar_bytes(members))
    for path in (archive.parent, archive):
        ds = data.load("cifar10", data_dir=path)
        check_dataset(ds, batches)
        assert ds.files == {"archive": str(archive)}
    check_dataset(data.load(data_dir=archive.parent), batches, name="custom")
    assert all_files(tmp_path / "d") == [cifar.ARCHIVE]  # nothing extracted


def test_loose_bins_win_over_an_archive_beside_them(tmp_path, rng):
    batches, other = make_batches(rng), make_batches(rng)
    folder = write_bins(tmp_path / "d", batches)
    (folder / cifar.ARCHIVE).write_bytes(tar_bytes(official_layout(other)))
    check_dataset(data.load("cifar10", data_dir=folder), batches)


@pytest.mark.parametrize("extra, what", [(5, "20 records and 5 bytes over"), (-1, "19 records and 3072 bytes over")])
def test_record_length_that_does_not_divide_the_file(tmp_path, rng, extra, what):
    folder = write_bins(tmp_path / "d", make_batches(rng))
    bad = folder / "data_batch_3.bin"
    raw = bad.read_bytes()
    bad.write_bytes(raw + bytes(extra) if extra > 0 else raw[:extra])
    with pytest.raises(DataError, match="not a whole number of 3073-byte records") as exc:
        data.load("cifar10", data_dir=folder)
    assert_one_line_naming(exc, bad, what, "re-download it")


def test_empty_batch_file(tmp_path, rng):
    folder = write_bins(tmp_path / "d", make_batches(rng))
    (folder / cifar.TEST_FILE).write_bytes(b"")
    with pytest.raises(DataError, match="is empty") as exc:
        data.load("cifar10", data_dir=folder)
    assert_one_line_naming(exc, folder / cifar.TEST_FILE)


def test_oversized_batch_file_is_refused_unread(tmp_path, rng):
    folder = write_bins(tmp_path / "d", make_batches(rng))
    huge = folder / "data_batch_1.bin"
    with open(huge, "r+b") as fh:  # sparse: 30 MB on paper, nothing on disk
        fh.truncate((cifar.MAX_RECORDS + 1) * cifar.RECORD_BYTES)
    with pytest.raises(DataError, match="10001 records, more than the 10000 of an official batch") as exc:
        data.load("cifar10", data_dir=folder)
    assert_one_line_naming(exc, huge)


def test_labels_outside_0_to_9(tmp_path, rng):
    batches = make_batches(rng)
    batches["data_batch_2.bin"][1][[3, 8]] = [10, 255]
    folder = write_bins(tmp_path / "d", batches)
    with pytest.raises(DataError, match=r"label 10 in record 3 \(2 of 20 records\) is outside 0\.\.9") as exc:
        data.load("cifar10", data_dir=folder)
    assert_one_line_naming(exc, folder / "data_batch_2.bin")


def test_missing_batch(tmp_path, rng):
    folder = write_bins(tmp_path / "d", make_batches(rng))
    (folder / "data_batch_4.bin").unlink()
    for name in ("cifar10", None):  # named, or recognised from the other five
        with pytest.raises(DataError, match="missing data_batch_4.bin of CIFAR-10's six batch files") as exc:
            data.load(name, data_dir=folder)
        assert_one_line_naming(exc, folder, "extract cifar-10-binary.tar.gz again")


def test_folder_with_neither_idx_nor_cifar_files(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError) as exc:
        data.load(data_dir=tmp_path / "d")
    assert_one_line_naming(exc, tmp_path / "d", "train-images-idx3-ubyte", "data_batch_1.bin", cifar.ARCHIVE)
    with pytest.raises(DataError, match="none of CIFAR-10's files") as exc:
        data.load("cifar10", data_dir=tmp_path / "d")
    assert_one_line_naming(exc, tmp_path / "d")
    with pytest.raises(DataError, match="no such folder") as exc:
        data.load("cifar10", data_dir=tmp_path / "nowhere")
    assert_one_line_naming(exc, tmp_path / "nowhere")


def test_idx_folders_still_read_as_idx(tmp_path, rng):
    # A folder of MNIST files under the CLI's "custom" label is not mistaken for CIFAR-10.
    from test_data import write_folder

    arrays = write_folder(tmp_path / "d", rng)
    ds = data.load("custom", data_dir=tmp_path / "d")
    np.testing.assert_array_equal(ds.train_images, arrays["train_images"])


# --------------------------------------------------------------------------------------------
# The archive's refusals


def write_archive(tmp_path, payload: bytes):
    path = tmp_path / cifar.ARCHIVE
    path.write_bytes(payload)
    return path


def test_archive_missing_a_batch(tmp_path, rng):
    members = [m for m in official_layout(make_batches(rng)) if not m[0].endswith(cifar.TEST_FILE)]
    path = write_archive(tmp_path, tar_bytes(members))
    with pytest.raises(DataError, match="the archive has no test_batch.bin") as exc:
        data.load("cifar10", data_dir=path)
    assert_one_line_naming(exc, path)


def test_archive_member_of_the_wrong_length(tmp_path, rng):
    members = official_layout(make_batches(rng))
    members[3] = (members[3][0], members[3][1][:-7])
    path = write_archive(tmp_path, tar_bytes(members))
    with pytest.raises(DataError, match="not a whole number of 3073-byte records") as exc:
        data.load("cifar10", data_dir=path)
    assert_one_line_naming(exc, f"{path}:{members[3][0]}")


def test_archive_labels_outside_0_to_9(tmp_path, rng):
    batches = make_batches(rng)
    batches[cifar.TEST_FILE][1][0] = 99
    path = write_archive(tmp_path, tar_bytes(official_layout(batches)))
    with pytest.raises(DataError, match="label 99 in record 0") as exc:
        data.load("cifar10", data_dir=path)
    assert_one_line_naming(exc, f"{cifar.ARCHIVE_FOLDER}/{cifar.TEST_FILE}")


@pytest.mark.parametrize(
    "member, size, message",
    [
        # A batch that claims 61 MB (1 GB once inflated would do the same): refused from its header.
        ("cifar-10-batches-bin/data_batch_1.bin", 2 * cifar.MAX_BATCH_BYTES, "20000 records, more than the 10000"),
        # A member that is not a batch, claiming 10 GB: refused before inflating it to skip it.
        ("cifar-10-batches-bin/readme.html", 10 << 30, "members declare more than"),
    ],
    ids=["huge-batch", "huge-other-member"],
)
def test_tar_bomb_is_refused_before_reading(tmp_path, member, size, message):
    # The archive holds nothing but the header: reading past it would fail with another error.
    path = write_archive(tmp_path, gz_of_header(member, size))
    start = time.perf_counter()
    with pytest.raises(DataError, match=message) as exc:
        data.load("cifar10", data_dir=path)
    assert time.perf_counter() - start < 2.0
    assert_one_line_naming(exc, path)


def test_archive_with_a_link_member(tmp_path, rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    path = write_archive(tmp_path, buf.getvalue())
    with pytest.raises(DataError, match="is a link or a special file") as exc:
        data.load("cifar10", data_dir=path)
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "corrupt"])
def test_damaged_archive(tmp_path, rng, damage):
    good = tar_bytes(official_layout(make_batches(rng)))
    payload = {
        "truncated": good[: len(good) // 2],
        "not-gzip": b"this is not a tar.gz at all",
        "corrupt": good[:100] + bytes(200) + good[300:],
    }[damage]
    path = write_archive(tmp_path, payload)
    with pytest.raises(DataError) as exc:
        data.load("cifar10", data_dir=path)
    assert_one_line_naming(exc, path, "re-download it")


# --------------------------------------------------------------------------------------------
# The download, from 127.0.0.1


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def remote(rng, server):
    """A tiny CIFAR-10 archive served at ``server.base + '/good/'``; returns (batches, digests)."""
    batches = make_batches(rng)
    body = tar_bytes(official_layout(batches))
    server.files[cifar.ARCHIVE] = body
    return batches, {cifar.ARCHIVE: hashlib.sha256(body).hexdigest()}


def test_download_then_cache_hit(server, remote, cache, capsys):
    batches, digests = remote
    assert not data.is_cached("cifar10")
    ds = data.load("cifar10", mirrors=[server.base + "/good/"], digests=digests)
    check_dataset(ds, batches)
    assert server.requests == [f"/good/{cifar.ARCHIVE}"]
    assert all_files(cache) == [cifar.ARCHIVE]  # the archive alone: nothing extracted, no .part file
    assert (cache / "cifar10" / cifar.ARCHIVE).is_file()
    assert f"downloading {cifar.ARCHIVE}" in capsys.readouterr().err
    assert data.is_cached("cifar10") and data.is_cached("CIFAR-10")
    assert "SHA-256 verified" in ds.source

    again = data.load("cifar10", mirrors=[server.base + "/good/"], digests=digests)
    assert len(server.requests) == 1  # from the cache
    check_dataset(again, batches)


def test_wrong_digest_is_refused_and_leaves_nothing(server, remote, cache):
    with pytest.raises(DataError, match=f"CIFAR-10: cannot download {cifar.ARCHIVE} .*SHA-256 mismatch") as exc:
        data.load("cifar10", mirrors=[server.base + "/good/"], digests={cifar.ARCHIVE: "0" * 64}, progress=False)
    assert "\n" not in str(exc.value)
    assert all_files(cache) == [] and not (cache / "cifar10").exists()


def test_all_mirrors_failing_names_cifar_files(server, remote, cache):
    _, digests = remote
    with pytest.raises(DataError) as exc:
        data.load("cifar10", mirrors=[closed_port_url(), server.base + "/missing/"], digests=digests, progress=False)
    assert_one_line_naming(exc, "HTTP 404", f"put {cifar.ARCHIVE} or its six .bin batch files in a folder")
    assert all_files(cache) == []


def test_no_download_when_told_not_to(server, remote):
    _, digests = remote
    with pytest.raises(DataError, match="CIFAR-10 is not in the cache .* downloading is off") as exc:
        data.load("cifar10", mirrors=[server.base + "/good/"], digests=digests, download=False)
    assert_one_line_naming(exc, cifar.ARCHIVE)
    assert server.requests == []


def test_published_digest_is_well_formed():
    (name, (sha, size)), = data.CIFAR10.files.items()
    assert name == "cifar-10-binary.tar.gz" and size == 170052171
    assert len(sha) == 64 and int(sha, 16) >= 0
    assert data.CIFAR10.mirrors == ("https://www.cs.toronto.edu/~kriz/",)
    assert "cifar10" in data.DATASETS
