"""The release as a user installs it: the wheel built from this tree, installed in a fresh
virtualenv, serves the demo config with its console (static files inside the wheel).

The fresh venv gets the wheel alone (``--no-deps``); its dependencies are read from the
test environment's site-packages through a plain path line (no editable install of
modelyard comes with it: that path's own ``.pth`` files are not processed), so what runs
is the wheel's code and files, without a download of every dependency in each run."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

import modelyard
from tests.conftest import free_port, wait_healthy

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    [built] = out.glob("modelyard-*.whl")
    return built


def test_the_wheel_holds_the_console_and_its_version(wheel: Path) -> None:
    assert wheel.name.startswith(f"modelyard-{modelyard.__version__}-py3-none-any")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"modelyard/{p.relative_to(ROOT / 'src' / 'modelyard')}"
        for p in (ROOT / "src/modelyard/console").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "modelyard/py.typed" in names


def test_a_fresh_venv_with_the_wheel_serves_the_demo(
    wheel: Path, gemma: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "test-deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    where = subprocess.run(
        [python, "-c", "import modelyard; print(modelyard.__file__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(purelib), where  # the wheel's, not this tree's
    said = subprocess.run([env_dir / "bin/modelyard", "--version"], capture_output=True, text=True)
    assert said.stdout.strip() == f"modelyard {modelyard.__version__}"

    port = free_port()
    env = {
        **os.environ,
        "MODELYARD_STATE_DIR": str(tmp_path / "state"),
        "MODELYARD_DEMO_WEIGHTS": str(gemma),
    }
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [env_dir / "bin/modelyard", "serve", "-c", ROOT / "examples/demo.yaml",
         "--listen", f"127.0.0.1:{port}"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log.read_text)
        assert httpx.get(url + "/health").json()["version"] == modelyard.__version__
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "modelyard" in page.text
        assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text)
        assert assets, page.text[:500]
        for asset in assets:
            assert httpx.get(url + asset).status_code == 200, asset
        models = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert {"qwen", "gemma", "embed"} <= models
        done = httpx.post(
            url + "/v1/completions",
            json={"model": "gemma", "prompt": "The sky is", "max_tokens": 4},
            timeout=120,
        )
        assert done.status_code == 200, done.text
        assert done.json()["choices"][0]["text"]
    finally:
        proc.terminate()
        proc.wait(60)
