"""Packaging: every package folder is installed under its collision-free import name."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"harness": "harness", "harness.models": "models", "harness.baselines": "baselines"}


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == MAPPING
    found = set()
    for name, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == set(cfg["packages"])


def test_models_import_as_harness_models():
    import harness.baselines.registry as reg
    import harness.models.executor as ex

    # the strict editable install imports through a tree of links to these very files
    assert Path(ex.__file__).resolve().parent == ROOT / "models"
    assert Path(reg.__file__).resolve().parent == ROOT / "baselines"


def test_models_never_import_harness_instrument():
    """docs/design.md §2: models/ never imports harness/ (only harness.models itself)."""
    bad = []
    for py in (ROOT / "models").rglob("*.py"):
        for line in py.read_text().splitlines():
            s = line.strip()
            if s.startswith(("from harness", "import harness")) and not s.startswith(
                ("from harness.models", "import harness.models")
            ):
                bad.append(f"{py.name}: {s}")
    assert not bad, bad


def test_constraints_pin_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()


def test_backbone_base_imports_no_family_and_no_loader():
    """models/backbones/base.py is the bottom of the backbone package: it imports none of the
    families (llava, qwen2_vl) nor the loader that knows them, at module level or inside a function."""
    import ast

    tree = ast.parse((ROOT / "models" / "backbones" / "base.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = "." * node.level + (node.module or "")
            imported.add(mod)
            imported.update(f"{mod}.{a.name}" for a in node.names)
    bad = {m for m in imported for part in ("llava", "qwen2_vl", "loading") if part in m.split(".")}
    assert not bad, bad


def test_every_data_file_ships():
    """Each non-Python file inside a package folder matches a package-data pattern of the package
    that owns it (a wheel, or the strict editable install's link tree, would otherwise lack it)."""
    from fnmatch import fnmatch

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = cfg["package-data"]
    folders = {}
    for pkg in cfg["packages"]:
        top = next(n for n in sorted(MAPPING, key=len, reverse=True) if pkg == n or pkg.startswith(n + "."))
        folders[ROOT / MAPPING[top] / Path(*pkg[len(top) :].split(".")[1:])] = pkg
    missing = []
    for root in {ROOT / f for f in MAPPING.values()}:
        for f in root.rglob("*"):
            if f.is_dir() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            owner = next(d for d in f.parents if d in folders)
            rel = f.relative_to(owner).as_posix()
            patterns = data.get("*", []) + data.get(folders[owner], [])
            # setuptools globs do not cross folders: "*.json" matches only the package's own files
            if not any(fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns):
                missing.append(f"{folders[owner]}: {rel}")
    assert not missing, missing


def test_tasks_load_from_any_working_directory(tmp_path, monkeypatch):
    from lmms_eval.tasks import TaskManager

    from harness.lmms_entry import TASKS_DIR
    from harness.tasks import load_tasks

    monkeypatch.chdir(tmp_path)
    tm = TaskManager("ERROR", include_path=TASKS_DIR, include_defaults=False)
    task = load_tasks(["shapes_exist_ci"], tm)["shapes_exist_ci"]
    assert len(task.test_docs()) > 0
    assert Path.cwd() == tmp_path
