"""The wheel is a real package: built from a clean copy of the checkout, installed into a fresh venv, it runs.

The fresh venv gets the project venv's libraries through a ``.pth`` line (no downloads, and none of the
checkout: the editable install's finder is not activated that way), so what runs is the wheel's code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "runs",
                                 "tmp", ".pytest_cache", ".ruff_cache")


def _clean_copy(target: Path) -> Path:
    """The checkout's files as a fresh clone would have them (tracked + not ignored), without build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:  # not a git checkout (e.g. an unpacked sdist): copy the tree minus build outputs
        shutil.copytree(ROOT, target, ignore=IGNORED)
        return target
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = _clean_copy(tmp_path_factory.mktemp("clone") / "finetune-studio")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "--wheel-dir", str(out), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("finetune_studio-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed; its libraries come from this test's environment."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "project-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "--ignore-installed", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def _packages_in_checkout() -> set[str]:
    found = set()
    for top in ("core", "gui"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(init.parent.relative_to(ROOT).as_posix())
    return found


def test_wheel_holds_every_package_and_resource_and_no_top_level_main(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = _packages_in_checkout()
    assert {"core", "core/commands", "gui", "gui/pages", "gui/widgets"} <= packages
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} missing from the wheel"
    resources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "resources").rglob("*")
                 if path.is_file() and "__pycache__" not in path.parts}
    assert {"resources/style_light.qss", "resources/icons/data.svg", "resources/presets/2_balanced.yaml"} <= resources
    assert resources - names == set()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"core", "gui", "resources"}  # no top-level main.py, no tests/bench
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "finetune-studio = gui.entry:main" in text


def _run(venv: Path, tmp_path: Path, *args: str, command: str = "finetune-studio") -> subprocess.CompletedProcess:
    executable = venv / ("Scripts" if os.name == "nt" else "bin") / command
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", FINETUNE_STUDIO_HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), PYTHONPATH="")
    # cwd outside the checkout: nothing may be imported from it
    return subprocess.run([str(executable), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)


def test_installed_command_runs_from_the_wheel(installed, tmp_path):
    where = _run(installed, tmp_path, "-c", "import core, gui, resources; print(core.__file__, gui.__file__, "
                 "resources.__file__)", command="python")
    assert where.returncode == 0, where.stderr
    assert all(Path(path).is_relative_to(installed) for path in where.stdout.split()), where.stdout

    top = _run(installed, tmp_path, "--help")
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: finetune-studio") and "train" in top.stdout

    train = _run(installed, tmp_path, "train", "--help")
    assert train.returncode == 0, train.stderr
    assert "usage: finetune-studio train" in train.stdout and "--config" in train.stdout

    data = _run(installed, tmp_path, "-c", "import re; from gui.pages.train_page import load_presets; "
                "from gui.theme import style_sheet; print([p.title for p in load_presets()]); "
                "print('\\n'.join(re.findall(r'url\\(([^)]*)\\)', style_sheet('light'))))", command="python")
    assert data.returncode == 0, data.stderr
    titles, *urls = data.stdout.splitlines()
    assert "Balanced" in titles
    assert urls and all(Path(url).is_file() and Path(url).is_relative_to(installed) for url in urls), urls

    shot = tmp_path / "data.png"
    window = _run(installed, tmp_path, "--screenshot", str(shot), "--page", "data", "--no-autoload")
    assert window.returncode == 0, window.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- dependencies ---------------------------------------------------------------------------------------

# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"yaml": "pyyaml", "PySide6": "pyside6-essentials", "rouge_score": "rouge-score",
                 "huggingface_hub": "huggingface-hub", "chatterbot_corpus": "chatterbot-corpus",
                 "llama_cpp": "llama-cpp-python", "mlflow": "mlflow-skinny"}
# Imported only where they are optional (each import guarded, with a message naming what to install).
OPTIONAL_IMPORTS = {"chatterbot_corpus", "llama_cpp", "mlflow", "tensorboard", "bitsandbytes", "optuna", "trl"}


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(strings):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(r.name): r for r in map(Requirement, strings)}


def _constraints() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_direct_dependency_within_its_bounds_as_installed():
    from importlib.metadata import version

    from packaging.version import Version

    project = _project()
    required = _requirements(project["dependencies"] + project["optional-dependencies"]["test"])
    pins = _constraints()
    for name, requirement in required.items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)
        installed = Version(version(name))
        assert Version(installed.base_version) == Version(pins[name]), f"{name}: installed {installed}, pinned {pins[name]}"
    for name in ("transformers", "peft", "accelerate"):  # the code leans on their internals
        assert any(spec.operator == "<" for spec in required[name].specifier), f"{name} has no upper bound"


def test_declared_dependencies_are_the_imported_ones():
    import ast

    from packaging.utils import canonicalize_name

    imported = set()
    for folder in ("core", "gui"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {name for name in imported - set(sys.stdlib_module_names) if name not in ("core", "gui", "resources")}
    project = _project()
    declared = set(_requirements(project["dependencies"]))
    extras = set(_requirements(sum(project["optional-dependencies"].values(), [])))
    needed = {canonicalize_name(DISTRIBUTIONS.get(name, name)) for name in third_party - OPTIONAL_IMPORTS}
    assert needed - declared == set(), "imported but not declared"
    optional = {canonicalize_name(DISTRIBUTIONS.get(name, name)) for name in third_party & OPTIONAL_IMPORTS}
    assert optional - declared - extras - {"chatterbot-corpus", "llama-cpp-python"} == set()
    # Declared but never imported directly: only libraries used through another (tokenizers, safetensors:
    # transformers' fast tokenizers and weight files; accelerate: `python -m accelerate.commands.launch`).
    # tqdm: the CLI progress bars (issue 18 item 7) may land after this test.
    assert declared - needed <= {"tokenizers", "safetensors", "accelerate", "tqdm"}, declared - needed
