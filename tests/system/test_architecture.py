"""The house's rules, checked on the code itself: no import cycle in src/ (counting the imports inside
functions, so none can hide one), no test importing bench/ or research/, and a third network family
added as one new file trains, saves, evaluates and predicts without any other file knowing it."""
from __future__ import annotations

import ast
import os
import re
import shutil

from conftest import REPO, run_py


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, known: set) -> set:
    """The src modules ``path`` imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def _python_files(folder: str):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        yield from (os.path.join(root, name) for name in files if name.endswith(".py"))


def test_src_has_no_import_cycle_even_through_imports_inside_functions():
    modules = {_module_name(path): path for path in _python_files("src")}
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    # A package's own submodules import it implicitly (their parent runs first): not an edge back.
    for name in graph:
        graph[name] = {other for other in graph[name] if not name.startswith(other + ".")}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert "src.models.registry" in graph and "src.checkpoint.model" in graph


def test_no_test_imports_bench_or_research():
    for path in _python_files("tests"):
        text = open(path, encoding="utf-8").read()
        assert not re.search(r"^\s*(from|import)\s+(bench|research)\b", text, re.M), path
        assert "sys.path.insert(0, os.path.join(REPO, \"bench\"))" not in text, path


def test_the_network_factory_asks_no_family_by_name():
    registry = open(os.path.join(REPO, "src", "models", "registry.py"), encoding="utf-8").read()
    assert "crnn" not in registry and "warpctc" not in registry


THIRD_FAMILY = '''"""A third family for the test: one convolution, pooled to a column sequence, then the shared head."""
from src.models.registry import Family, ModelOption, register_model


def _build(arch, spec, platform):
    from mindspore import nn, ops

    from src.ctc_head import CTCHead

    class Columns(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, arch["columns_width"], 3, pad_mode="same", has_bias=True)
            self.pool = nn.MaxPool2d(kernel_size=(spec.input_height, 4), stride=(spec.input_height, 4))
            self.fc = CTCHead(arch["columns_width"], spec.num_classes)

        def construct(self, x):
            x = self.pool(ops.relu(self.conv(x)))              # (B, C, 1, W / 4)
            return self.fc(ops.transpose(ops.squeeze(x, 2), (2, 0, 1)))

    return Columns()


def _check(arch, spec):
    if not 1 <= arch["columns_width"] <= 256:
        raise ValueError(f"--columns_width must be in 1..256, got {arch['columns_width']}")


register_model(Family(
    name="columns", summary="one convolution over pixel columns", options=(
        ModelOption("columns_width", int, 16, "network columns: its convolution's channels"),),
    check=_check, ctc_steps=lambda arch, spec: spec.width // 4, steps_how=lambda arch, spec: "width / 4",
    build=_build))
'''


def test_a_third_family_is_one_new_file(data_root, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "tests", "docs", "pretrained",
                                                               "__pycache__", "research", "bench"))
    (copy / "src" / "models" / "columns.py").write_text(THIRD_FAMILY, encoding="utf-8")
    env = {"PYTHONPATH": str(copy)}
    help_text = " ".join(run_py([copy / "train.py", "--help"], cwd=tmp_path, env=env).stdout.split())
    assert "--columns_width" in help_text and "columns (one convolution over pixel columns)" in help_text
    bad = run_py([copy / "train.py", "--network", "columns", "--columns_width", "0"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "--columns_width must be in 1..256, got 0" in bad.stderr
    trained = run_py([copy / "train.py", "--dataset_path", data_root / "train", "--network", "columns",
                      "--columns_width", "8", "--batch_size", "16", "--train_steps", "3",
                      "--save_checkpoint_path", tmp_path / "ckpt"], cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    [checkpoint] = [p for p in os.listdir(tmp_path / "ckpt") if p.startswith("columns-") and p.endswith(".ckpt")]
    # eval and predict read the family and its option from the checkpoint alone
    evaluated = run_py([copy / "eval.py", "--dataset_path", data_root / "test", "--checkpoint_path",
                        tmp_path / "ckpt" / checkpoint], cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert re.search(r"accuracy", evaluated.stdout + evaluated.stderr)
    image = sorted(os.listdir(data_root / "test"))[0]
    predicted = run_py([copy / "predict.py", "--checkpoint_path", tmp_path / "ckpt" / checkpoint,
                        data_root / "test" / image], cwd=tmp_path, env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.startswith(str(data_root / "test" / image) + "\t")
