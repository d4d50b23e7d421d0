"""What a notebook sees of `import tessera`: the submodules the README names reachable without
importing them by hand, the public names alone in dir(), and signatures of methods read off the
classes (help(tessera.Job))."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import tessera


def test_submodules_load_on_first_attribute_access():
    code = "import tessera; print(tessera.aio.Client.__name__, tessera.training.Training.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Client", "Training"]


def test_importing_tessera_alone_loads_neither_grpc_nor_numpy():
    code = "import sys, tessera; print('grpc' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_dir_lists_the_public_names_and_submodules_not_the_module_s_own_imports():
    names = dir(tessera)
    for internal in ("Any", "TYPE_CHECKING", "importlib", "annotations"):
        assert internal not in names
    assert {"Client", "Job", "aio", "training", "__version__"} <= set(names)
    assert set(tessera.__all__) <= set(names)


def test_a_method_read_off_its_class_has_a_signature():
    signature = inspect.signature(tessera.Job.watch)
    assert next(iter(signature.parameters)) == "self"
    assert "from_seq" in signature.parameters
    shown = pydoc.render_doc(tessera.Job.watch, renderer=pydoc.plaintext)
    assert "watch(self" in shown
