"""Registry names, sizes, HTML pages and the recorded-hash file (issue #30, items 9 and 11).

Downloads come from a real HTTP server on loopback (``test_download``'s fixtures), no mocks.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from scvi_scgpt.hub import fetch_pretrained, load_registry
from scvi_scgpt.hub._download import RECORDED_HASHES, _record
from tests.hub import test_download as _shared
from tests.hub.test_download import _serve_model

# test_download's fixtures: a loopback HTTP server, and a cache of this test's own (autouse)
server = _shared.server
isolated_cache = _shared.isolated_cache

QUOTA_PAGE = (
    b"\n  <!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
    b"<body>Too many users have viewed or downloaded this file recently.</body></html>"
)


def _model_files(folder: Path) -> list[str]:
    """The files of a model folder, less the recorded-hash file and its lock."""
    return sorted(p.name for p in folder.iterdir() if RECORDED_HASHES not in p.name)


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip`` with its bytes (``None`` for folders)."""
    return {
        str(p): p.read_bytes() if p.is_file() else None
        for p in root.rglob("*")
        if p != skip and skip not in p.parents
    }


@pytest.mark.parametrize("bad", ["../../x", "..", "a/b", "a\\b", "", "ABSOLUTE"])
def test_a_model_name_outside_the_cache_is_refused(
    bad, server, official_dir, tmp_path, monkeypatch
):
    cache = tmp_path / "a" / "b" / "cache"  # ../../x of it is tmp_path/a/x, inside tmp_path
    monkeypatch.setenv("SCVI_SCGPT_CACHE", str(cache))
    name = str(tmp_path / "outside") if bad == "ABSOLUTE" else bad
    registry = _serve_model(server, official_dir, name="m")
    registry["models"] = {name: registry["models"]["m"]}
    before = _tree(tmp_path, cache)
    with pytest.raises(ValueError, match="model name .* must be a plain name"):
        fetch_pretrained(name, registry=registry, progress_bar=False)
    assert _tree(tmp_path, cache) == before  # nothing written outside the cache
    assert not server.requests
    with pytest.raises(ValueError, match="model name .* must be a plain name"):
        load_registry(registry)


@pytest.mark.parametrize("alias", ["../x", "/abs", "", ".."])
def test_an_alias_that_is_not_a_plain_name_is_refused(alias):
    spec = {"files": {"a": {"url": None, "sha256": None}}, "aliases": [alias]}
    with pytest.raises(ValueError, match="alias .* must be a plain name"):
        load_registry({"models": {"m": spec}})


def test_the_recorded_hash_file_is_no_registry_file_name():
    files = {RECORDED_HASHES: {"url": "http://127.0.0.1:9/x", "sha256": None}}
    with pytest.raises(ValueError, match="reserved"):
        load_registry({"models": {"m": {"files": files}}})


def test_aliases_must_be_a_list_of_strings():
    spec = {"files": {"a": {"url": None, "sha256": None}}, "aliases": "human"}
    with pytest.raises(ValueError, match='"aliases" must be a list of strings'):
        load_registry({"models": {"m": spec}})
    spec["aliases"] = ["human", 3]
    with pytest.raises(ValueError, match='"aliases" must be a list of strings'):
        load_registry({"models": {"m": spec}})


@pytest.mark.parametrize("hashes", [False, True])
def test_a_download_of_another_size_is_refused(hashes, server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir, hashes=hashes)
    spec = registry["models"]["tiny"]["files"]["best_model.pt"]
    body = server.files["tiny/best_model.pt"]
    spec["size"] = len(body) + 1
    with pytest.raises(ValueError, match=f"{len(body)} bytes, the registry says {len(body) + 1}"):
        fetch_pretrained("tiny", registry=registry, progress_bar=False)
    folder = isolated_cache / "tiny"
    assert _model_files(folder) == ["args.json", "vocab.json"]  # no best_model.pt, no tmp
    recorded = folder / RECORDED_HASHES
    assert not recorded.exists() or "best_model.pt" not in json.loads(recorded.read_text())
    spec["size"] = len(body)  # the right size loads
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert (folder / "best_model.pt").read_bytes() == body


def test_a_cached_file_of_another_size_is_fetched_again(server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir, hashes=False)
    spec = registry["models"]["tiny"]["files"]["vocab.json"]
    spec["size"] = len(server.files["tiny/vocab.json"])
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    (isolated_cache / "tiny" / "vocab.json").write_text("{}")  # no hash recorded for it now
    (isolated_cache / "tiny" / RECORDED_HASHES).unlink()
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert server.requests["tiny/vocab.json"] == 2


@pytest.mark.parametrize("why", ["offline", "no_url"])
def test_a_cached_file_of_another_size_is_kept_when_it_cannot_be_fetched_again(
    why, server, official_dir, isolated_cache, monkeypatch
):
    registry = _serve_model(server, official_dir, hashes=False)
    spec = registry["models"]["tiny"]["files"]["best_model.pt"]
    size = len(server.files["tiny/best_model.pt"])
    spec["size"] = size + 5  # the registry's size is wrong, or the file placed by hand is
    if why == "offline":
        monkeypatch.setenv("SCVI_SCGPT_OFFLINE", "1")
    else:
        spec["url"] = None
    (isolated_cache / "tiny").mkdir(parents=True)
    for key, body in server.files.items():  # every file placed by hand
        (isolated_cache / key).write_bytes(body)
    placed = isolated_cache / "tiny" / "best_model.pt"
    with pytest.raises(ValueError, match=f"{size} bytes.*registry says {size + 5}") as err:
        fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert str(placed) in str(err.value)
    assert placed.read_bytes() == server.files["tiny/best_model.pt"]  # kept as it was
    assert "tiny/best_model.pt" not in server.requests


def test_registry_sizes_must_be_byte_counts():
    for size in (-1, "12", 1.5, True):
        spec = {"files": {"a": {"url": None, "sha256": None, "size": size}}}
        with pytest.raises(ValueError, match="size"):
            load_registry({"models": {"m": spec}})


def test_an_html_page_is_never_recorded_as_the_trusted_hash(server, official_dir, isolated_cache):
    registry = _serve_model(
        server, official_dir, hashes=False, files={"best_model.pt": QUOTA_PAGE}
    )
    with pytest.raises(ValueError, match="HTML page"):
        fetch_pretrained("tiny", registry=registry, progress_bar=False)
    folder = isolated_cache / "tiny"
    assert _model_files(folder) == ["args.json", "vocab.json"]  # no best_model.pt, no tmp
    recorded = json.loads((folder / RECORDED_HASHES).read_text())
    assert set(recorded) == {"args.json", "vocab.json"}
    assert server.requests["tiny/best_model.pt"] == 1  # a page is no network error: no retry
    # the real file, once served, is downloaded and recorded
    body = (official_dir / "zeroshot_model" / "best_model.pt").read_bytes()
    server.files["tiny/best_model.pt"] = body
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    recorded = json.loads((folder / RECORDED_HASHES).read_text())
    assert recorded["best_model.pt"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_an_html_file_with_a_published_hash_is_accepted(server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir, files={"best_model.pt": QUOTA_PAGE})
    registry["models"]["tiny"]["files"] = {
        "page.html": registry["models"]["tiny"]["files"]["best_model.pt"]
    }
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert (isolated_cache / "tiny" / "page.html").read_bytes() == QUOTA_PAGE


def _run_at_once(work, n_threads: int) -> list[str]:
    """Run ``work(i)`` in ``n_threads`` threads released together; the errors raised."""
    barrier = threading.Barrier(n_threads)
    errors = []

    def rank(i):
        barrier.wait()
        try:
            work(i)
        except Exception as err:
            errors.append(repr(err))

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_ranks_record_every_hash(tmp_path):
    n_threads, n_files = 8, 25

    def rank(i):
        for j in range(n_files):
            _record(tmp_path, f"f{i}_{j}", f"{i:032x}{j:032x}", f"http://x/{i}/{j}")

    errors = _run_at_once(rank, n_threads)
    assert not errors, errors[:3]
    recorded = json.loads((tmp_path / RECORDED_HASHES).read_text())
    assert len(recorded) == n_threads * n_files
    assert recorded["f3_7"]["sha256"] == f"{3:032x}{7:032x}"
    left = {p.name for p in tmp_path.iterdir()}
    assert left <= {RECORDED_HASHES, f".{RECORDED_HASHES}.lock"}  # no temporary file left


def test_concurrent_downloads_of_one_model_record_every_file(server, isolated_cache):
    """Ranks fetching files of one model at once (each its own registry file) keep all hashes."""
    n = 8
    registries = []
    for i in range(n):
        server.files[f"m/f{i}.bin"] = bytes([i]) * 1000
        files = {f"f{i}.bin": {"url": f"{server.url}/m/f{i}.bin", "sha256": None}}
        registries.append({"models": {"m": {"files": files}}})
    errors = _run_at_once(
        lambda i: fetch_pretrained("m", registry=registries[i], progress_bar=False), n
    )
    assert not errors, errors[:3]
    recorded = json.loads((isolated_cache / "m" / RECORDED_HASHES).read_text())
    assert set(recorded) == {f"f{i}.bin" for i in range(n)}
