"""Pretrained models by name, downloaded from a real HTTP server on loopback (no mocks)."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from scvi_scgpt import SCGPT, CheckpointError
from scvi_scgpt.hub import (
    cache_dir,
    fetch_pretrained,
    list_pretrained_models,
    load_registry,
    resolve_model_name,
)

OFFICIAL_FILES = ("args.json", "vocab.json", "best_model.pt")


class _Server:
    """Serves ``files`` (path -> bytes); counts requests; can cut the first response short."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: dict[str, int] = {}
        self.truncate_first: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.lstrip("/")
                server.requests[path] = server.requests.get(path, 0) + 1
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.truncate_first and server.requests[path] == 1:
                    self.wfile.write(body[: len(body) // 2])  # the connection drops mid-file
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCVI_SCGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SCVI_SCGPT_OFFLINE", raising=False)
    monkeypatch.delenv("SCVI_SCGPT_REGISTRY", raising=False)
    return tmp_path / "cache"


def _serve_model(server, official_dir, name="tiny", *, hashes=True, files=None) -> dict:
    """Put a committed official-format fixture on the server; return its registry."""
    entry = {}
    for file_name in OFFICIAL_FILES:
        body = (files or {}).get(file_name) or (
            official_dir / "zeroshot_model" / file_name
        ).read_bytes()
        server.files[f"{name}/{file_name}"] = body
        sha = hashlib.sha256(body).hexdigest() if hashes else None
        entry[file_name] = {"url": f"{server.url}/{name}/{file_name}", "sha256": sha}
    return {
        "models": {
            name: {
                "files": entry,
                "description": "test fixture",
                "licence": "MIT",
                "citation": "none",
                "aliases": [f"{name}_alias"],
            }
        }
    }


def _cells(official_cells):
    SCGPT.setup_anndata(official_cells)
    return official_cells


def test_by_name_downloads_verifies_caches_and_loads(
    server, official_dir, official_cells, isolated_cache
):
    registry = _serve_model(server, official_dir)
    adata = _cells(official_cells)
    model = SCGPT.from_pretrained("tiny", adata, registry=registry, progress_bar=False)
    local = SCGPT.from_pretrained(official_dir / "zeroshot_model", adata)
    np.testing.assert_array_equal(
        model.get_latent_representation(), local.get_latent_representation()
    )
    for file_name in OFFICIAL_FILES:
        assert (isolated_cache / "tiny" / file_name).read_bytes() == server.files[
            f"tiny/{file_name}"
        ]
        assert server.requests[f"tiny/{file_name}"] == 1
    # a cache hit makes no request, even with the server gone, and works offline
    server.close()
    SCGPT.from_pretrained("tiny_alias", adata, registry=registry, progress_bar=False)
    assert all(n == 1 for n in server.requests.values())


def test_offline_uses_the_cache_and_names_what_is_missing(
    server, official_dir, official_cells, monkeypatch, isolated_cache
):
    registry = _serve_model(server, official_dir)
    monkeypatch.setenv("SCVI_SCGPT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="SCVI_SCGPT_OFFLINE") as err:
        SCGPT.from_pretrained("tiny", _cells(official_cells), registry=registry)
    assert f"{server.url}/tiny/args.json" in str(err.value)
    assert str(isolated_cache / "tiny" / "args.json") in str(err.value)
    assert not server.requests  # no network access at all
    monkeypatch.delenv("SCVI_SCGPT_OFFLINE")
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    monkeypatch.setenv("SCVI_SCGPT_OFFLINE", "1")
    assert fetch_pretrained("tiny", registry=registry) == isolated_cache / "tiny"


def test_a_download_that_fails_its_hash_is_refused(server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir)
    server.files["tiny/best_model.pt"] = b"not the checkpoint the registry names"
    with pytest.raises(ValueError, match="does not match its sha256"):
        fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert not (isolated_cache / "tiny" / "best_model.pt").exists()
    assert server.requests["tiny/best_model.pt"] == 3  # first try + 2 retries
    leftovers = [p.name for p in (isolated_cache / "tiny").iterdir()]
    assert sorted(leftovers) == ["args.json", "vocab.json"]  # no temporary file left


def test_a_corrupted_cache_file_is_fetched_again(server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir)
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    (isolated_cache / "tiny" / "vocab.json").write_text("{}")
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert (isolated_cache / "tiny" / "vocab.json").read_bytes() == server.files["tiny/vocab.json"]
    assert server.requests["tiny/vocab.json"] == 2


def test_an_interrupted_download_is_retried(server, official_dir, isolated_cache):
    registry = _serve_model(server, official_dir)
    server.truncate_first.add("tiny/best_model.pt")
    fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert server.requests["tiny/best_model.pt"] == 2
    cached = (isolated_cache / "tiny" / "best_model.pt").read_bytes()
    assert cached == server.files["tiny/best_model.pt"]


def test_without_a_published_hash_the_first_download_records_it(
    server, official_dir, isolated_cache, caplog
):
    registry = _serve_model(server, official_dir, hashes=False)
    with caplog.at_level(logging.WARNING, logger="scvi_scgpt.hub._download"):
        fetch_pretrained("tiny", registry=registry, progress_bar=False)
    assert "No sha256 is published" in caplog.text
    recorded = json.loads((isolated_cache / "tiny" / "sha256-recorded.json").read_text())
    body = server.files["tiny/best_model.pt"]
    assert recorded["best_model.pt"]["sha256"] == hashlib.sha256(body).hexdigest()
    # later loads verify the recorded hash: a server now serving other bytes is refused
    (isolated_cache / "tiny" / "best_model.pt").write_bytes(b"corrupted")
    server.files["tiny/best_model.pt"] = b"changed upstream"
    with pytest.raises(ValueError, match="does not match its sha256"):
        fetch_pretrained("tiny", registry=registry, progress_bar=False)


class _Hostile:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "pwned",))


def test_a_hostile_pickle_is_never_executed(server, official_dir, official_cells, tmp_path):
    marker = Path(__file__).parent / "pwned"
    hostile = pickle.dumps({"encoder.embedding.weight": _Hostile()})
    registry = _serve_model(server, official_dir, files={"best_model.pt": hostile})
    with pytest.raises(CheckpointError):
        SCGPT.from_pretrained(
            "tiny", _cells(official_cells), registry=registry, progress_bar=False
        )
    assert not marker.exists()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="whole_human") as err:
        resolve_model_name("no_such_model")
    assert "scGPT_human" in str(err.value) and "SCVI_SCGPT_REGISTRY" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SCGPT.from_pretrained("some/missing/dir", None)


def test_builtin_registry_covers_the_official_models():
    entries = load_registry()
    assert set(entries) == {
        "whole_human", "continual_pretrained", "brain", "blood", "heart", "lung", "kidney",
        "pan_cancer",
    }  # fmt: skip
    for entry in entries.values():
        assert {f.name for f in entry.files} == set(OFFICIAL_FILES)
        assert entry.licence and entry.citation and entry.source.startswith("https://")
    for alias, name in [("scGPT_human", "whole_human"), ("scGPT_CP", "continual_pretrained"),
                        ("scGPT_bc", "blood"), ("Pan-Cancer", "pan_cancer")]:  # fmt: skip
        assert resolve_model_name(alias).name == name
    table = list_pretrained_models()
    assert table.loc["whole_human", "downloadable"] and not table.loc["brain", "downloadable"]
    assert not table["cached"].any()


def test_no_download_url_says_where_to_put_the_files(isolated_cache):
    with pytest.raises(FileNotFoundError, match="No direct download") as err:
        fetch_pretrained("brain")
    assert "1vf1ijfQSk7rGdDGpBntR5bi5g6gNt-Gx" in str(err.value)
    assert str(isolated_cache / "brain") in str(err.value)


def test_registries_from_the_environment_and_bad_registries(
    server, official_dir, tmp_path, monkeypatch
):
    registry = _serve_model(server, official_dir, name="site_model")
    path = tmp_path / "site.json"
    path.write_text(json.dumps(registry))
    monkeypatch.setenv("SCVI_SCGPT_REGISTRY", str(path))
    assert fetch_pretrained("site_model", progress_bar=False) == cache_dir() / "site_model"
    with pytest.raises(ValueError, match='"url" and "sha256"'):
        load_registry({"models": {"x": {"files": {"a": {"url": "u"}}}}})
    with pytest.raises(ValueError, match="64 hex"):
        load_registry({"models": {"x": {"files": {"a": {"url": "u", "sha256": "abc"}}}}})
    with pytest.raises(ValueError, match="plain name"):
        load_registry({"models": {"x": {"files": {"../a": {"url": "u", "sha256": None}}}}})
    with pytest.raises(ValueError, match="top-level"):
        load_registry({"x": {}})


@pytest.mark.parametrize("name", sorted(load_registry()))
def test_every_builtin_entry_loads_from_a_mirror(name, server, official_dir, official_cells):
    """Each built-in entry's files, served from loopback by a site registry of that name."""
    entry = load_registry()[name]
    files = {}
    for spec in entry.files:
        body = (official_dir / "zeroshot_model" / spec.name).read_bytes()
        server.files[f"{name}/{spec.name}"] = body
        files[spec.name] = {"url": f"{server.url}/{name}/{spec.name}", "sha256": None}
    mirror = {"models": {name: {"files": files, "aliases": list(entry.aliases)}}}
    alias = entry.aliases[0]
    model = SCGPT.from_pretrained(alias, _cells(official_cells), registry=mirror,
                                  progress_bar=False)  # fmt: skip
    assert model.is_trained_ and (cache_dir() / name / "sha256-recorded.json").is_file()
