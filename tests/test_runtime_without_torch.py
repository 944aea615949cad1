"""PyTorch is a test-only dependency: with torch hidden from the import system, every module of
the library imports and the Reranker scores pairs with the bundled warm-start model.

The check runs in a fresh interpreter, since this one has usually imported torch already
(the parity tests compare against transformers' PyTorch models).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prorank_jax", "rl", "scoring", "launch")

# Runs before anything else in the child. Each finder on sys.meta_path is wrapped so that it
# never finds torch: `import torch` (or torch.anything) then raises ModuleNotFoundError and
# importlib.util.find_spec("torch") returns None, both exactly as without torch installed.
# A single finder that raised ImportError for torch would not do: transformers and datasets
# probe for torch with find_spec, which would then raise where a torch-less machine answers None.
HIDE_TORCH = '''
import sys


class HideTorch:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(name, path, target) if find_spec else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


sys.meta_path[:] = [HideTorch(finder) for finder in sys.meta_path]
'''

CHILD = HIDE_TORCH + '''
import importlib
import importlib.util
import json
import pkgutil

try:
    import torch  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("torch is still importable: the blocker does not work")
assert importlib.util.find_spec("torch") is None


def fail(name):
    raise ImportError(f"cannot import {name}")


imported = []
for package_name in PACKAGES:
    package = importlib.import_module(package_name)
    imported.append(package_name)
    for info in pkgutil.walk_packages(package.__path__, prefix=package_name + ".", onerror=fail):
        importlib.import_module(info.name)
        imported.append(info.name)

from prorank_jax.data import bundled_tokenizer_dir
from prorank_jax.pretrained import bundled_warm_start_dir
from scoring.reranker import Reranker

# The warm start is saved without tokenizer files; it pairs with the bundled tokenizer.
reranker = Reranker.from_pretrained(bundled_warm_start_dir(), tokenizer=bundled_tokenizer_dir(),
                                    show_progress=False)
scores = reranker.predict(
    ["what is the capital of France?", "what is the capital of France?"],
    ["Paris is the capital and most populous city of France.",
     "The mitochondria is the powerhouse of the cell."],
)
print(json.dumps({"modules": imported, "scores": [float(s) for s in scores],
                  "torch_in_sys_modules": "torch" in sys.modules}))
'''


def library_modules() -> set[str]:
    """Every module of the library packages, read off the file tree (so a module that pkgutil
    failed to list would show up as missing)."""
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if not all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                continue  # a script folder, not part of a package
            names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_library_imports_and_reranker_scores_without_torch():
    child = f"PACKAGES = {PACKAGES!r}\n" + CHILD
    out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["torch_in_sys_modules"] is False
    missing = library_modules() - set(result["modules"])
    assert not missing, f"modules not imported: {sorted(missing)}"
    assert {"prorank_jax.model", "rl.train", "scoring.reranker", "launch.cli"} <= set(result["modules"])
    scores = result["scores"]
    assert len(scores) == 2 and all(abs(s) < 1e3 for s in scores) and scores[0] != scores[1]
