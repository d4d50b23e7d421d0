"""The architecture family python: a user's nn.Module from training.module_paths trains,
registers (with its file's sha256), exports to ONNX, serves and explains; every way to name
a module the daemon must not import, or one that cannot build, is refused with what to fix."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tessera
from tessera.inference import refusing_version
from tessera.v1 import registry_pb2
from tesserad.errors import FailedPrecondition, NotFound
from tesserad.nn import user_modules
from tesserad.nn.user_modules import allow_module_paths, find_entry_file, load_class
from tests.conftest import InProcessDaemon, daemon_settings

# A name no other test's module takes: the daemon runs in the test's process.
MODULE = "byo_nets_t30"
SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self, input_shape, output_size, hidden=8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, output_size)
        )

    def forward(self, x):
        return self.body(x)


class Fixed(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.head = nn.Linear(4, width)

    def forward(self, x):
        return self.head(x)


def helper():
    return None
"""


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modules")
    (root / f"{MODULE}.py").write_text(SOURCE)
    return root


@pytest.fixture(scope="module")
def more_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second directory of training.module_paths."""
    return tmp_path_factory.mktemp("more-modules")


@pytest.fixture(scope="module")
def byo_daemon(
    tmp_path_factory: pytest.TempPathFactory, modules: Path, more_modules: Path
) -> Iterator[InProcessDaemon]:
    data_dir = tmp_path_factory.mktemp("byo") / "data"
    listed = {"training.module_paths": [str(modules), str(more_modules)]}
    running = InProcessDaemon(daemon_settings(data_dir, **listed)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def byo(byo_daemon: InProcessDaemon) -> Iterator[tessera.Client]:
    with tessera.Client(byo_daemon.target, timeout=30) as sdk:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, 4)).astype(np.float32)
        sdk.datasets.push("byo-table", x=x, y=(x[:, 0] > 0).astype(np.int64), splits={"train": 1.0})
        yield sdk


def spec(entry: str = f"{MODULE}:Net", **kwargs: object) -> dict[str, object]:
    return {
        "experiment": "byo",
        "architecture": {"input_shape": [4], "output_size": 2, "python": {"entry": entry, "kwargs": kwargs}},
        "data": {"dataset": "byo-table"},
        "epochs": 1,
        "batch_size": 16,
        "register_as": {"model": "byo"},
    }


@pytest.fixture(scope="module")
def trained_job(byo: tessera.Client) -> tessera.Job:
    """A job that trained the module's Net (hidden=6) and registered it as model byo."""
    return byo.training.submit(spec(hidden=6)).wait()


def test_a_module_trains_registers_with_its_hash_exports_serves_and_explains(
    byo: tessera.Client, trained_job: tessera.Job, modules: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert trained_job.registered is not None
    trained = trained_job.registered.version
    version = byo.models.version("byo", trained)
    python = version.architecture.python
    assert python.entry == f"{MODULE}:Net" and dict(python.kwargs) == {"hidden": 6}
    source = modules / f"{MODULE}.py"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    assert python.module_sha256 == before
    fine_tune = {**spec(), "init_from": {"model": "byo", "version": trained}}
    del fine_tune["architecture"]
    with pytest.raises(
        tessera.InvalidArgument, match="fine-tuning does not take the architecture family python"
    ):
        byo.training.submit(fine_tune)
    x = np.ones((3, 4), np.float32)
    served = byo.inference.predict("byo", {"input": x}, version=trained)["output"]
    assert served.shape == (3, 2)
    exported = byo.models.export_onnx("byo", trained)
    assert exported.version.format == registry_pb2.ARTIFACT_FORMAT_ONNX
    onnx_out = byo.inference.predict("byo", {"input": x}, version=exported.version.version)["output"]
    np.testing.assert_allclose(onnx_out, served, atol=1e-4)
    with pytest.raises(tessera.InvalidArgument, match="explained through that torch version") as refused:
        byo.inference.explain("byo", {"wrong": x}, "saliency", version=exported.version.version)
    assert refusing_version(refused.value) == exported.version.version  # not its torch parent's
    explanation = byo.inference.explain("byo", x, "saliency", version=trained, target=1)
    assert explanation["input"].shape == x.shape
    # A changed file still builds the old weights' model, and says so.
    source.write_text(SOURCE + "\n# changed\n")
    after = hashlib.sha256(source.read_bytes()).hexdigest()
    byo.inference.unload("byo", trained)
    with caplog.at_level(logging.WARNING, logger="tesserad.nn"):
        again = byo.inference.predict("byo", {"input": x}, version=trained)["output"]
    np.testing.assert_array_equal(again, served)
    assert any(before in r.getMessage() and after in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.parametrize(
    "entry",
    [
        "../evil:Net",
        f"{MODULE}.py:Net",
        f"sub/{MODULE}:Net",
        "/etc/passwd:x",
        f"{MODULE}",
        f"{MODULE}:Net:x",
        "",
    ],
)
def test_entries_that_are_not_module_and_class_names_are_refused(byo: tessera.Client, entry: str) -> None:
    with pytest.raises(
        tessera.InvalidArgument, match=r"spec\.architecture\.python\.entry: (must be|names a module)"
    ):
        byo.training.submit(spec(entry))


@pytest.mark.parametrize("entry", ["__main__:Net", f"{MODULE}.__init__:Net", "pkg.__main__:run"])
def test_entries_naming_a_main_or_init_module_are_refused(byo: tessera.Client, entry: str) -> None:
    with pytest.raises(
        tessera.InvalidArgument, match=r"entry: must be module:Class naming no __(main|init)__"
    ):
        byo.training.submit(spec(entry))


def test_symbolic_links_leading_out_of_the_module_paths_are_refused(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text(SOURCE)
    (modules / "byo_link_t30.py").symlink_to(outside)
    (modules / "byo_lib_t30").symlink_to(Path(os.__file__).parent)  # the standard library
    (modules / "byo_pkg_t30").mkdir()
    (modules / "byo_pkg_t30" / "__init__.py").symlink_to(outside)
    (modules / "byo_pkg_t30" / "inner.py").write_text(SOURCE)
    for entry in ["byo_link_t30:Net", "byo_lib_t30.this:Net", "byo_pkg_t30.inner:Net"]:
        with pytest.raises(
            tessera.FailedPrecondition, match="is a symbolic link leading out of the directories"
        ) as raised:
            byo.training.submit(spec(entry))
        assert str(modules) not in str(raised.value) and str(tmp_path) not in str(raised.value)


def test_a_package_beside_the_module_is_the_file_checked_and_its_link_out_never_runs(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    ran = tmp_path / "ran"
    outside = tmp_path / "outside.py"
    outside.write_text(f"open({str(ran)!r}, 'w').close()\n")
    (modules / "byo_beside_t30.py").write_text(SOURCE)
    weights = tmp_path / "w.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 2, "python": {"entry": "byo_beside_t30:Net"}}
    version = byo.models.push("byo-beside", weights, architecture=architecture)
    # Python imports a package before a module of the same name beside it.
    (modules / "byo_beside_t30").mkdir()
    (modules / "byo_beside_t30" / "__init__.py").symlink_to(outside)
    link_out = (
        r"entry: 'byo_beside_t30/__init__\.py' \(module 'byo_beside_t30'\) is a symbolic link leading out"
    )
    with pytest.raises(tessera.FailedPrecondition, match=link_out):
        byo.inference.predict("byo-beside", {"input": np.ones((1, 4), np.float32)}, version=version.version)
    with pytest.raises(tessera.FailedPrecondition, match=link_out):
        byo.training.submit(spec("byo_beside_t30:Net"))
    assert not ran.exists()


def test_a_package_under_a_later_directory_that_python_imports_is_the_one_checked(
    byo: tessera.Client, modules: Path, more_modules: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text(SOURCE)
    (modules / "byo_two_t30").mkdir()  # no __init__.py: a namespace package's portion
    (modules / "byo_two_t30" / "inner.py").write_text(SOURCE)
    (more_modules / "byo_two_t30").mkdir()
    package = more_modules / "byo_two_t30" / "__init__.py"  # a regular package: Python imports this one
    package.symlink_to(outside)
    with pytest.raises(
        tessera.FailedPrecondition,
        match=r"'byo_two_t30/__init__\.py' \(module 'byo_two_t30'\) is a symbolic link leading out",
    ):
        byo.training.submit(spec("byo_two_t30.inner:Net"))
    package.unlink()
    package.write_text("")
    with pytest.raises(
        tessera.NotFound,
        match=r"module 'byo_two_t30\.inner' is not found: its package 'byo_two_t30' is imported from "
        r"'byo_two_t30', which holds no inner\.py",
    ):
        byo.training.submit(spec("byo_two_t30.inner:Net"))


def test_a_compiled_extension_module_of_the_name_is_refused_not_loaded(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    (modules / "byo_ext_t30.py").write_text(SOURCE)
    # Python imports an extension module before the .py beside it; these bytes are no library.
    compiled = f"byo_ext_t30{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    (modules / compiled).write_bytes(b"not a shared object")
    refused = rf"module 'byo_ext_t30' would be imported from '{re.escape(compiled)}', a compiled extension"
    with pytest.raises(tessera.FailedPrecondition, match=refused):
        byo.training.submit(spec("byo_ext_t30:Net"))
    weights = tmp_path / "w.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 2, "python": {"entry": "byo_ext_t30:Net"}}
    with pytest.raises(tessera.FailedPrecondition, match=refused):
        byo.models.push("byo-ext", weights, architecture=architecture)


def test_a_module_that_exits_while_a_resume_reads_its_tensors_is_refused_and_the_daemon_answers(
    byo: tessera.Client, trained_job: tessera.Job, modules: Path
) -> None:
    (modules / "byo_layout_t30.py").write_text(
        "import sys\n\nfrom torch import nn\n\n\nclass Layout(nn.Module):\n"
        "    def state_dict(self, *args, **kwargs):\n        sys.exit(6)\n"
    )
    resumed = {**spec("byo_layout_t30:Layout"), "resume_from": trained_job.id}
    with pytest.raises(
        tessera.FailedPrecondition,
        match=r"reading the model's tensors ran its code, which raised SystemExit: 6",
    ):
        byo.training.submit(resumed)
    assert byo.training.job(trained_job.id).state == tessera.JobState.SUCCEEDED


def test_a_package_named_as_a_standard_module_is_refused_at_submit(
    byo: tessera.Client, modules: Path
) -> None:
    (modules / "email").mkdir()
    (modules / "email" / "byo_t30.py").write_text(SOURCE)
    with pytest.raises(
        tessera.FailedPrecondition, match=r"module 'email' is also the name of .* rename the file"
    ):
        byo.training.submit(spec("email.byo_t30:Net"))


def test_a_bare_directory_of_the_modules_name_elsewhere_on_the_import_path_does_not_shadow_it(
    byo: tessera.Client, modules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import save_file

    (tmp_path / "byo_ns_t30").mkdir()  # a namespace package's portion: Python imports the module first
    monkeypatch.syspath_prepend(str(tmp_path))
    (modules / "byo_ns_t30.py").write_text(SOURCE)
    weights = tmp_path / "w.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 2, "python": {"entry": "byo_ns_t30:Net"}}
    version = byo.models.push("byo-ns", weights, architecture=architecture)
    assert version.architecture.python.module_sha256 == hashlib.sha256(SOURCE.encode()).hexdigest()


def test_kwargs_holding_nan_are_refused_naming_the_field(byo: tessera.Client) -> None:
    with pytest.raises(tessera.InvalidArgument, match=r"spec\.architecture\.python\.kwargs: holds NaN"):
        byo.training.submit(spec(hidden=float("nan")))


def test_a_pushed_module_that_exits_is_contained_and_its_sha256_is_the_daemons(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    (modules / "byo_exit_t30.py").write_text("import sys\n\nsys.exit(3)\n")
    weights = tmp_path / "w.safetensors"
    save_file({"w": np.zeros((2, 4), np.float32)}, str(weights))
    architecture = {
        "input_shape": [4],
        "output_size": 2,
        "python": {"entry": "byo_exit_t30:Net", "module_sha256": "0" * 64},
    }
    version = byo.models.push("byo-exit", weights, architecture=architecture)
    real = hashlib.sha256((modules / "byo_exit_t30.py").read_bytes()).hexdigest()
    assert version.architecture.python.module_sha256 == real
    with pytest.raises(tessera.FailedPrecondition, match=r"importing 'byo_exit_t30' raised SystemExit: 3"):
        byo.inference.predict("byo-exit", {"input": np.ones((1, 4), np.float32)}, version=version.version)
    with pytest.raises(tessera.InvalidArgument, match=r"architecture\.python\.kwargs: holds NaN"):
        byo.models.push(
            "byo-exit",
            weights,
            architecture={
                **architecture,
                "python": {"entry": "byo_exit_t30:Net", "kwargs": {"x": float("inf")}},
            },
        )
    assert byo.models.get("byo-exit").latest_version == version.version  # and the daemon still answers


def test_a_forward_that_exits_is_that_requests_error(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    (modules / "byo_quit_t30.py").write_text(
        "import sys\n\nfrom torch import nn\n\n\nclass Quit(nn.Module):\n"
        "    def forward(self, x):\n        sys.exit(4)\n\n\n"
        "class QuitLoading(nn.Module):\n    def load_state_dict(self, *args, **kwargs):\n        sys.exit(5)\n"
    )
    weights = tmp_path / "none.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 2, "python": {"entry": "byo_quit_t30:Quit"}}
    version = byo.models.push("byo-quit", weights, architecture=architecture)
    x = {"input": np.ones((1, 4), np.float32)}
    for _ in range(2):  # the daemon still serves
        with pytest.raises(tessera.FailedPrecondition, match=r"the model's forward raised SystemExit: 4"):
            byo.inference.predict("byo-quit", x, version=version.version)
    with pytest.raises(tessera.FailedPrecondition, match=r"the ONNX export's model raised SystemExit: 4"):
        byo.models.export_onnx("byo-quit", version.version)
    with pytest.raises(
        tessera.FailedPrecondition, match=r"explaining the model ran its code, which raised SystemExit: 4"
    ):
        byo.inference.explain("byo-quit", x["input"], "saliency", version=version.version)
    loading = {**architecture, "python": {"entry": "byo_quit_t30:QuitLoading"}}
    overridden = byo.models.push("byo-quit", weights, architecture=loading)
    with pytest.raises(
        tessera.FailedPrecondition, match=r"loading the model ran its code, which raised SystemExit: 5"
    ):
        byo.inference.predict("byo-quit", x, version=overridden.version)
    assert byo.models.get("byo-quit").latest_version == overridden.version


RETURNS_SOURCE = """
import torch
from torch import nn


def scores(x):
    return torch.cat([x, x[:, :1]], 1)  # (N, 5) of input (N, 4)


class Pair(nn.Module):
    def forward(self, x):
        probs = scores(x).softmax(1)
        return probs, probs.topk(5).indices


class Named(nn.Module):
    def forward(self, x):
        return {"probs": scores(x)}


class Listed(nn.Module):
    def forward(self, x):
        return [scores(x), x]


class Nothing(nn.Module):
    def forward(self, x):
        return None


class Narrow(nn.Module):
    def forward(self, x):
        return x[:, :3]


class Flat(nn.Module):
    def forward(self, x):
        return scores(x).argmax(1).float()


class Labels(nn.Module):
    def forward(self, x):
        return scores(x).long()


class Double(nn.Module):
    def forward(self, x):
        return scores(x).double()
"""
ONE_TENSOR = re.escape("a served module returns one tensor shaped (N, output_size)")


RETURNS_REFUSED = [
    ("Pair", re.escape("forward returned a tuple of 2; ") + ONE_TENSOR + ": return one, or export to ONNX"),
    ("Named", re.escape("forward returned a dict of 1; ") + ONE_TENSOR),
    ("Listed", re.escape("forward returned a list of 2; ") + ONE_TENSOR),
    ("Nothing", re.escape("forward returned None; ") + ONE_TENSOR),
    ("Narrow", r"forward returned a tensor shaped \(\d+, 3\); " + ONE_TENSOR + re.escape(", here (N, 5)")),
    ("Flat", r"forward returned a tensor shaped \(\d+,\); " + ONE_TENSOR),
    ("Labels", re.escape("forward returned a tensor of dtype int64; ") + ONE_TENSOR + " of floating-point"),
]


@pytest.mark.parametrize(("entry", "said"), RETURNS_REFUSED, ids=[entry for entry, _ in RETURNS_REFUSED])
def test_a_forward_returning_other_than_one_tensor_of_the_signature_is_refused_in_words(
    byo: tessera.Client, modules: Path, tmp_path: Path, entry: str, said: str
) -> None:
    from safetensors.numpy import save_file

    (modules / "byo_returns_t30.py").write_text(RETURNS_SOURCE)
    weights = tmp_path / "none.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 5, "python": {"entry": f"byo_returns_t30:{entry}"}}
    version = byo.models.push("byo-returns", weights, architecture=architecture)
    x = {"input": np.ones((2, 4), np.float32)}
    with pytest.raises(
        tessera.FailedPrecondition, match=f"warm-up of .* failed on random inputs of its signature: {said}"
    ):
        byo.inference.predict("byo-returns", x, version=version.version)
    # Without a warm-up, the request that first runs it is told the same.
    byo.inference.load("byo-returns", version=version.version, warmup_runs=0)
    with pytest.raises(tessera.FailedPrecondition, match=f"^FAILED_PRECONDITION: {said}"):
        byo.inference.predict("byo-returns", x, version=version.version)


def test_a_forward_returning_another_float_dtype_is_served_as_float32(
    byo: tessera.Client, modules: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import save_file

    (modules / "byo_returns_t30.py").write_text(RETURNS_SOURCE)
    weights = tmp_path / "none.safetensors"
    save_file({}, str(weights))
    architecture = {"input_shape": [4], "output_size": 5, "python": {"entry": "byo_returns_t30:Double"}}
    version = byo.models.push("byo-returns", weights, architecture=architecture)
    output = byo.inference.predict(
        "byo-returns", {"input": np.ones((2, 4), np.float32)}, version=version.version
    )
    assert output["output"].dtype == np.float32
    assert output["output"].tolist() == [[1.0] * 5] * 2


@pytest.mark.parametrize("entry", ["nowhere:Net", "os:system", "tesserad.server:Daemon"])
def test_a_module_outside_the_module_paths_is_not_found(byo: tessera.Client, entry: str) -> None:
    with pytest.raises(tessera.NotFound, match=r"in none of the 2 directories of training\.module_paths"):
        byo.training.submit(spec(entry))


def test_kwargs_naming_the_shared_fields_are_refused(byo: tessera.Client) -> None:
    with pytest.raises(tessera.InvalidArgument, match=r"kwargs\.output_size: set architecture\.output_size"):
        byo.training.submit(spec(output_size=3))


@pytest.mark.parametrize(
    ("entry", "kwargs", "error"),
    [
        (f"{MODULE}:helper", {}, "is a function, not a torch.nn.Module subclass"),
        (
            f"{MODULE}:Fixed",
            {"width": 2, "depth": 3},
            "TypeError: Fixed.__init__() got an unexpected keyword",
        ),
        (f"{MODULE}:Missing", {}, f"module '{MODULE}' has no attribute 'Missing'"),
    ],
)
def test_a_class_that_cannot_be_built_fails_its_job_with_the_error(
    byo: tessera.Client, entry: str, kwargs: dict[str, object], error: str
) -> None:
    job = byo.training.submit(spec(entry, **kwargs))
    with pytest.raises(tessera.JobFailed, match=f"failed: .*{re.escape(error)}"):
        job.wait()


def test_a_daemon_without_module_paths_refuses_the_family_naming_the_setting(daemon: InProcessDaemon) -> None:
    with tessera.Client(daemon.target, timeout=30) as sdk:
        rng = np.random.default_rng(0)
        sdk.datasets.push("byo-table", x=rng.normal(size=(8, 4)).astype(np.float32), y=np.zeros(8, np.int64))
        with pytest.raises(
            tessera.FailedPrecondition, match=r"training\.module_paths \(tesserad serve --module-path"
        ):
            sdk.training.submit(spec())


def test_a_listed_directory_that_is_not_there_is_warned_of_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-modules"
    with caplog.at_level(logging.WARNING, logger="tesserad.server"):
        InProcessDaemon(
            daemon_settings(tmp_path / "data", **{"training.module_paths": [str(missing)]})
        ).start().stop()
    assert any(str(missing) in r.getMessage() and "not a directory" in r.getMessage() for r in caplog.records)


# The import machinery itself, in this process: load_class as serving calls it, over the same two
# listed directories the daemon imports from.


@pytest.fixture(scope="module")
def listed(modules: Path, more_modules: Path) -> list[Path]:
    allow_module_paths([modules, more_modules])
    return [modules, more_modules]


def _package(root: Path, name: str, files: dict[str, str]) -> Path:
    (root / name).mkdir()
    for file, text in files.items():
        (root / name / file).write_text(text)
    return root / name


def test_a_failed_import_leaves_the_fixed_module_its_packages_submodules(listed: list[Path]) -> None:
    uses_widths = "import byo_pk_t30.widths\n\nWIDTH = byo_pk_t30.widths.WIDTH\n" + SOURCE
    package = _package(listed[0], "byo_pk_t30", {"__init__.py": "", "widths.py": "WIDTH = 3\n"})
    (package / "net.py").write_text(uses_widths + "\nundefined_name\n")
    with pytest.raises(NameError, match="undefined_name"):
        load_class("byo_pk_t30.net:Net")
    (package / "net.py").write_text(uses_widths)
    for _ in range(2):
        assert sys.modules[load_class("byo_pk_t30.net:Net").__module__].WIDTH == 3


def test_a_changed_package_keeps_the_submodules_it_imports(listed: list[Path]) -> None:
    uses_widths = "import byo_pk2_t30.widths\n\nWIDTH = byo_pk2_t30.widths.WIDTH\n" + SOURCE
    package = _package(listed[0], "byo_pk2_t30", {"__init__.py": uses_widths, "widths.py": "WIDTH = 3\n"})
    first = load_class("byo_pk2_t30:Net")
    (package / "__init__.py").write_text(uses_widths + "\n# changed\n")
    assert load_class("byo_pk2_t30:Net") is not first
    assert sys.modules["byo_pk2_t30"].widths is sys.modules["byo_pk2_t30.widths"]


def test_a_recreated_namespace_package_keeps_its_submodules(listed: list[Path]) -> None:
    uses_widths = "import byo_ns2_t30.widths\n\nWIDTH = byo_ns2_t30.widths.WIDTH\n" + SOURCE
    package = _package(listed[0], "byo_ns2_t30", {"net.py": uses_widths, "widths.py": "WIDTH = 3\n"})
    load_class("byo_ns2_t30.net:Net")
    (listed[1] / "byo_ns2_t30").mkdir()  # a second portion: the namespace package is another one
    load_class("byo_ns2_t30.net:Net")
    namespace = sys.modules["byo_ns2_t30"]
    assert len(namespace.__path__) == 2
    assert namespace.net is sys.modules["byo_ns2_t30.net"]
    (package / "net.py").write_text(uses_widths + "\n# changed\n")
    assert sys.modules[load_class("byo_ns2_t30.net:Net").__module__].WIDTH == 3


class _Mapped:
    """A meta path finder as an editable install or a custom importer adds one: it imports
    `name` from `path`, and fails on `broken`."""

    def __init__(self, name: str, path: Path, broken: str) -> None:
        self.name, self.path, self.broken = name, path, broken

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name == self.broken:
            raise RuntimeError("a finder that fails")
        if name != self.name:
            return None
        return importlib.util.spec_from_file_location(name, self.path)


def test_a_name_a_meta_path_finder_imports_is_refused(
    listed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "byo_meta_t30.py").write_text(SOURCE)
    (listed[0] / "byo_meta_t30.py").write_text(SOURCE)
    (listed[0] / "byo_odd_t30.py").write_text(SOURCE)
    mapped = _Mapped("byo_meta_t30", tmp_path / "byo_meta_t30.py", broken="byo_odd_t30")
    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, mapped])
    with pytest.raises(
        FailedPrecondition, match="'byo_meta_t30' is also the name of a module Python imports"
    ):
        load_class("byo_meta_t30:Net")
    with pytest.raises(FailedPrecondition, match="'byo_meta_t30' is also the name"):
        find_entry_file("byo_meta_t30:Net", listed)
    assert "byo_meta_t30" not in sys.modules
    assert load_class("byo_odd_t30:Net").__module__ == "byo_odd_t30"  # a finder's error is no answer


def test_a_package_importing_its_entry_module_runs_it_once(listed: list[Path]) -> None:
    _package(listed[0], "byo_pb_t30", {"__init__.py": "from .net import Net\n", "net.py": SOURCE})
    net = load_class("byo_pb_t30.net:Net")
    assert sys.modules["byo_pb_t30"].Net is net
    assert load_class("byo_pb_t30.net:Net") is net


def test_the_warned_sha256_is_that_of_the_source_run(
    listed: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    # The package's own code rewrites its entry module's file before it is imported.
    rewrite = "from pathlib import Path\n\nPath(__file__).with_name('net.py').write_text({!r})\n"
    changed = SOURCE + "\n# changed\n"
    _package(listed[0], "byo_pc_t30", {"__init__.py": rewrite.format(changed), "net.py": SOURCE})
    with caplog.at_level(logging.WARNING, logger="tesserad.nn"):
        load_class("byo_pc_t30.net:Net", expected_sha256="0" * 64)
    run = hashlib.sha256(changed.encode()).hexdigest()
    assert [r.getMessage().count(run) for r in caplog.records] == [1], caplog.text


def test_a_module_named_as_a_package_is_said_to_be_a_module(listed: list[Path]) -> None:
    (listed[0] / "byo_plain_t30.py").write_text(SOURCE)
    said = r"module 'byo_plain_t30\.sub' is not found: 'byo_plain_t30' is a module, not a package"
    with pytest.raises(NotFound, match=said):
        find_entry_file("byo_plain_t30.sub:Net", listed)
    with pytest.raises(NotFound, match=said):
        load_class("byo_plain_t30.sub:Net")


def _without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads of /proc/self/fd fail, as on macOS, BSD or a sandbox without /proc."""
    readlink = os.readlink

    def absent(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", absent)


def test_a_module_loads_where_there_is_no_proc(listed: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Every load failed with a raw OSError naming /proc/self/fd/N.
    (listed[0] / "byo_noproc_t30.py").write_text(SOURCE)
    _without_proc(monkeypatch)
    assert load_class("byo_noproc_t30:Net").__module__ == "byo_noproc_t30"


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
def test_a_file_swapped_for_a_link_out_after_its_check_is_refused_unread(
    listed: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc: bool
) -> None:
    if not proc:
        _without_proc(monkeypatch)
    ran = tmp_path / "ran"
    outside = tmp_path / "outside.py"
    outside.write_text(f"open({str(ran)!r}, 'w').close()\n")
    (listed[0] / "byo_swap_t30.py").write_text(SOURCE)
    checked = user_modules._checked_spec

    def swapped_after_each_check(name: str, *args: Any) -> importlib.machinery.ModuleSpec:
        """A file in place while it is checked and a link leading out right after: the race."""
        place = listed[0] / "byo_swap_t30.py"
        place.unlink()
        place.write_text(SOURCE)
        spec = checked(name, *args)
        place.unlink()
        place.symlink_to(outside)
        return spec

    monkeypatch.setattr(user_modules, "_checked_spec", swapped_after_each_check)
    with pytest.raises(
        FailedPrecondition, match=r"'byo_swap_t30\.py' \(module 'byo_swap_t30'\) is a symbolic link"
    ):
        load_class("byo_swap_t30:Net")
    assert not ran.exists()
