"""conf/ ships inside the wheel, so a non-editable install composes the same configs."""
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_every_config_and_runs_without_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("metarun-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"metarun/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs and configs <= names
    # Install it into a fresh environment that sees the dependencies but not this checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies from this interpreter's site-packages, whether that is the system's or a venv's
    # (--system-site-packages would see only the base interpreter's): plain paths in a .pth file, after the
    # new venv's own site-packages, and without running this environment's .pth hooks (its editable metarun).
    site_dir = next((venv / "lib").glob("python*/site-packages"))
    (site_dir / "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run([venv / "bin" / "python", "-c",
                             "import metarun.conf, importlib.resources as r, sys; sys.argv=['metarun','iterations=2','eval_tasks=4','progress=false'];"
                             "print(r.files('metarun.conf'));from metarun.cli import main; main()"],
                            cwd=work, capture_output=True, text=True, env={"WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(venv) in result.stdout and "final: test/loss=" in result.stdout
