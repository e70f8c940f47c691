"""`python launch.py serve` starts the workbench on loopback and shows the database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_app_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 300, accept=(200,)) -> None:
    """Wait for the server to answer (a loaded 2-core machine can take minutes to import torch and Gradio);
    a server that exits fails at once with its output."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in accept:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def start_server(data_dir: Path, extra_args=(), db_url: str | None = None,
                 **env_extra: str) -> tuple[subprocess.Popen, str]:
    """`python launch.py serve` on a free loopback port as a subprocess, answering: -> (process, URL).
    It serves the database at ``db_url`` (default: the SQLite file in ``data_dir``)."""
    extra_args = [*extra_args, *(["--db", db_url] if db_url else [])]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT), **env_extra)
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "serve", "--port", str(port),
                                "--data-dir", str(data_dir), *extra_args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url + "gradio_api/info" if "--auth-file" in extra_args else url, process, accept=(200, 401))
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise
    return process, url


@contextlib.contextmanager
def serving(data_dir: Path, extra_args=(), db_url: str | None = None, **env_extra: str):
    """`python launch.py serve` on a free loopback port as a subprocess; yields its URL."""
    process, url = start_server(data_dir, extra_args, db_url, **env_extra)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server(tmp_path, synthetic_coco, database_url):
    """The workbench serving a database (SQLite or PostgreSQL: `--db URL`) that `launch.py import-coco` filled."""
    data_dir = tmp_path / "wb"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(ROOT / "launch.py"), "import-coco", str(synthetic_coco), "--images",
                    str(synthetic_coco.parent / "images"), "--data-dir", str(data_dir), "--db", database_url],
                   check=True, env=env, capture_output=True)
    with serving(data_dir, db_url=database_url) as url:
        yield url


def test_serve_lists_images_categories_and_counts(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    overview, categories, images = client.predict(api_name="/overview")
    assert "4 images" in overview and "13 annotations" in overview and "3 categories" in overview
    rows = {row[1]: row for row in categories["data"]}
    assert rows["sign"][2:] == [4, 0, "B (boxes only)"]
    assert rows["ball"][2:] == [0, 4, "A (masks)"]
    assert sorted(row[1] for row in images["data"]) == ["img_0.jpg", "img_2.jpg", "img_3.jpg", "sub/img_1.jpg"]
