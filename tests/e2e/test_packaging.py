"""The installed package is one namespace, ``align``: the repository's ``modalities/``, ``eval/`` and
``configs/`` folders install as ``align.modalities``, ``align.eval`` and ``align.configs``, so a
user's own ``eval`` or ``modalities`` package is neither shadowed by ours nor shadows it. Checked
on a real (non-editable) wheel imported from a folder that has its own ``eval/`` and
``modalities/`` packages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_source(dst: Path) -> Path:
    """What the wheel is built from, copied (a build in the checkout would leave build/ there)."""
    import shutil

    dst.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, dst / part)
    for part in ("align", "modalities", "eval", "configs"):
        shutil.copytree(ROOT / part, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_wheel_installs_one_namespace_that_a_users_packages_do_not_collide_with(tmp_path):
    import importlib.util

    src = copy_source(tmp_path / "src")  # an in-tree build would leave build/ in the checkout
    wheels = tmp_path / "wheels"
    # the installed setuptools when there is one (no download); else pip's isolated build env
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-q", "-w", str(wheels)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next(wheels.glob("align-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"align", next(t for t in tops if t.endswith(".dist-info"))}, tops
    names = zipfile.ZipFile(wheel).namelist()
    assert {"align/modalities/image.py", "align/eval/runner.py", "align/configs/demo-digits.yaml"} <= set(names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    project = tmp_path / "project"  # a user's project with packages of the same generic names
    for pkg in ("eval", "modalities"):
        (project / pkg).mkdir(parents=True)
        (project / pkg / "__init__.py").write_text(f"OWNER = 'user {pkg}'\n")
    code = (
        "import eval, modalities, align, align.eval.runner, align.modalities.base, align.configs\n"
        "from align.registry import ADAPTERS\n"
        "assert eval.OWNER == 'user eval' and modalities.OWNER == 'user modalities'\n"
        f"assert align.__file__.startswith({str(site)!r}), align.__file__\n"
        f"assert align.eval.runner.__file__.startswith({str(site)!r})\n"
        "assert ADAPTERS.get('text').__module__ == 'align.modalities.text'\n"
        "from align.app.demo import demo_config_path\n"
        "assert demo_config_path().is_file()\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_layers_point_down_on_the_installed_package(tmp_path):
    """import-linter's contracts (pyproject.toml) hold on the installed package: the layers contract
    breaks when a lower layer imports a higher one (config importing the CLI), and the no-cycles
    contract when two modules of one package import each other, so both are really checked."""
    import importlib.util

    if importlib.util.find_spec("importlinter") is None:
        import pytest

        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    lint = str(Path(sys.executable).with_name("lint-imports"))

    def check(src: Path, name: str) -> subprocess.CompletedProcess:
        site = tmp_path / f"site-{name}"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *isolation, "--target", str(site), str(src)],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        )
        return subprocess.run(
            [lint, str(src / "pyproject.toml")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(site)},
        )

    src = copy_source(tmp_path / "src")
    kept = check(src, "as-is")
    assert kept.returncode == 0 and "Layers point down KEPT" in kept.stdout, kept.stdout[-3000:] + kept.stderr[-2000:]
    assert "No import cycles KEPT" in kept.stdout
    with open(src / "align" / "config" / "schema.py", "a") as f:
        f.write("\nimport align.app.cli  # an upward import\n")
    broken = check(src, "broken")
    assert broken.returncode != 0 and "Layers point down BROKEN" in broken.stdout
    assert "align.config.schema -> align.app.cli" in broken.stdout

    cyclic = copy_source(tmp_path / "src-cyclic")  # a circle inside one layer: losses <-> task
    with open(cyclic / "align" / "objectives" / "losses.py", "a") as f:
        f.write("\nimport align.objectives.task  # closes a circle\n")
    circle = check(cyclic, "cyclic")
    assert circle.returncode != 0 and "No import cycles BROKEN" in circle.stdout, circle.stdout[-3000:]
    assert "Layers point down KEPT" in circle.stdout


def layer_entries(pyproject: Path) -> list[str]:
    """Every package or module the layers contract names."""
    import re

    import tomllib

    layers = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    return [name for line in layers for name in re.split(r"\s*[:|]\s*", line.strip())]


def modules_outside_layers(site: Path, entries: list[str]) -> list[str]:
    """Modules of the installed ``align`` package that no layer covers (the root package itself
    is the façade and sits above every layer)."""
    mods = []
    for f in sorted((site / "align").rglob("*.py")):
        parts = f.relative_to(site).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "align" and not any(name == e or name.startswith(e + ".") for e in entries):
            mods.append(name)
    return mods


def test_every_installed_module_sits_in_a_layer(tmp_path):
    """A new file is checked by the contract because its package is: no module of the installed
    wheel is outside every layer, and a module planted beside the layers is caught."""
    src = copy_source(tmp_path / "src")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(src)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    entries = layer_entries(src / "pyproject.toml")
    assert all(e.startswith("align") for e in entries) and len(entries) >= 8, entries
    assert modules_outside_layers(site, entries) == []
    assert {"align.modalities.image", "align.eval.runner", "align.objectives.losses"} <= {
        m
        for m in ("align.modalities.image", "align.eval.runner", "align.objectives.losses")
        if (site / Path(*m.split("."))).with_suffix(".py").is_file()
    }
    (site / "align" / "stray.py").write_text("X = 1\n")  # a module in no layer's package
    assert modules_outside_layers(site, entries) == ["align.stray"]


def test_the_test_extra_brings_what_the_parity_tests_compare_against():
    """`pip install -e '.[test]'` alone must run the CLIP_benchmark parity tests, not skip them."""
    from importlib.metadata import PackageNotFoundError, version

    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert "clip-benchmark==1.6.2" in extra
    try:
        assert version("clip-benchmark") == "1.6.2"
    except PackageNotFoundError:  # pragma: no cover - an install without the extra
        raise AssertionError("clip-benchmark is missing: install the test extra (pip install -e '.[test]')")
    import clip_benchmark.metrics.zeroshot_retrieval  # noqa: F401  (imports with its own dependencies)
