"""Backend discovery through entry points, including broken third-party plugins."""

import pytest

from conftest import tle, tle_inprocess


def fake_distribution(root, name, module_source, group="tle.backends"):
    """Install a minimal distribution (dist-info + module) into ``root``, found through PYTHONPATH."""
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {name}_plugin\n")
    (root / f"{name}_plugin.py").write_text(module_source)
    return {"PYTHONPATH": str(root)}


def test_broken_backend_is_listed_not_fatal(tmp_path):
    env = fake_distribution(tmp_path, "broken", "import module_that_does_not_exist\n")
    proc = tle("backends", env=env, check_rc=0)
    line = next(l for l in proc.stdout.splitlines() if "broken" in l)
    assert "import failed" in line and "ModuleNotFoundError" in line
    assert "numpy" in proc.stdout  # the healthy example backend still shows


def test_selecting_a_broken_backend_is_a_user_error(tmp_path):
    env = fake_distribution(tmp_path, "broken", "raise RuntimeError('boom at import')\n")
    proc = tle("run", "--backend", "broken", "--model", "x", env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "failed to import" in proc.stderr and "boom at import" in proc.stderr


def test_unknown_backend_lists_installed():
    proc = tle_inprocess("models", "--backend", "nosuch")
    assert proc.returncode == 2 and "unknown backend 'nosuch'" in proc.stderr and "numpy" in proc.stderr


def test_backends_does_not_import_frameworks(tmp_path):
    code = ("import sys\nfrom tle.backends.manager import survey_backends\nrows = survey_backends()\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules), len(rows))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, count = out.split("] ")
    assert loaded == "[" and int(count) >= 1


def test_plugin_group_can_wrap_hooks(tmp_path):
    """A tle.plugins plugin adds a model to the numpy backend without touching it."""
    source = (
        "from tle import hookimpl\nfrom tle.contract.records import ModelInfo\n"
        "@hookimpl\ndef register_models():\n    return [ModelInfo('extra_net', ('block1',), family='extra')]\n"
    )
    env = fake_distribution(tmp_path, "extra", source, group="tle.plugins")
    proc = tle("models", "--backend", "numpy", env=env, check_rc=0)
    assert "extra_net" in proc.stdout and "mlp" in proc.stdout


MISSPELT = ("from tle import hookimpl\nfrom tle.contract.records import BackendInfo\n"
            "@hookimpl\ndef backend_info():\n"
            "    return BackendInfo(name='typo', framework='none', framework_version='-', description='typo')\n"
            "@hookimpl\ndef load_backbon(model, num_classes):\n    return None\n")


@pytest.mark.parametrize("group, command", [("tle.backends", ("plan", "--backend", "typo", "--model", "mlp")),
                                            ("tle.plugins", ("plan", "--backend", "numpy", "--model", "mlp"))])
def test_a_misspelt_hook_fails_at_load_with_one_line(tmp_path, group, command):
    """pluggy's check_pending, as a user error: a hook name tle does not have is never silently ignored."""
    env = fake_distribution(tmp_path, "typo", MISSPELT, group=group)
    proc = tle(*command, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    kind = "backend" if group == "tle.backends" else "plugin"
    assert f"{kind} 'typo' (typo_plugin) implements 'load_backbon', which is not a tle hook" in proc.stderr
    assert "rename it to 'load_backbone'" in proc.stderr


def test_implements_checks_the_name_and_marks_a_hookimpl():
    """tle.implements(spec): @hookimpl, for a function named after its hook (pyright checks its signature)."""
    from tle import implements
    from tle.contract import hookspecs

    def resolve_device(device: str) -> str:
        return device

    assert implements(hookspecs.resolve_device)(resolve_device) is resolve_device
    assert hasattr(resolve_device, "tle_impl")  # what pluggy looks for
    with pytest.raises(ValueError, match="resolve_devise implements resolve_device"):
        @implements(hookspecs.resolve_device)
        def resolve_devise(device: str) -> str:
            return device


@pytest.mark.parametrize("plugin", ["plugins/torch_backend/plugin.py", "plugins/keras_backend/plugin.py",
                                    "plugins/spyketorch_backend/plugin.py",
                                    "examples/numpy_backend/tle_numpy/plugin.py"])
def test_every_builtin_hook_is_checked_against_its_spec(plugin):
    """Each hook of the shipped backends is a plain function under @implements(hookspecs.<its name>): what lets
    pyright (make check) check it against the spec. No hook is written by code (exec, globals())."""
    import ast

    from conftest import ROOT

    source = (ROOT / plugin).read_text()
    assert "exec(" not in source and "globals()" not in source
    hooks = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.decorator_list:
            (decorator,) = node.decorator_list
            assert isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "implements", node.name
            hooks[node.name] = ast.unparse(decorator.args[0])
    assert hooks and all(spec == f"hookspecs.{name}" for name, spec in hooks.items()), hooks


@pytest.mark.parametrize("args, words", [
    (["models", "--backend", "numpy", "--bogus"], ["No such option", "--bogus"]),
    (["run", "--backend", "numpy", "--model", "nosuch", "--dataset", "digits"], ["no model 'nosuch'", "mlp"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--strategy", "finetune:block9"], ["block9", "block1"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--strategy", "feature-extractor"], ["--weights"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--epochs", "-3"], ["train.epochs"]),
    (["run", "-c", "/nonexistent/spec.yaml"], ["does not exist"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--dataset", "folder:/nonexistent/dir"], ["/nonexistent/dir"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--dataset", "nosuchset"], ["nosuchset"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--weights", "/no/such/weights.npz"], ["does not exist"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--weights", "runs:/0123456789abcdef",
      "--strategy", "freeze"], ["not found"]),
    (["run", "--backend", "numpy", "--model", "mlp", "--set", "train.nosuch=1"], ["train.nosuch", "unknown field"]),
    (["plan", "--backend", "numpy", "--model", "mlp", "--strategy", "transfer:block7"], ["block7"]),
    (["predict", "/no/such/model.onnx", "x.png"], ["does not exist"]),
    (["convert", "0123456789abcdef", "--to", "keras"], ["not found", "--tracking-uri"]),
])
def test_user_errors_exit_2_with_one_line(args, words, store_env, tmp_path):
    proc = tle_inprocess(*args, env=store_env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr


def test_convert_refuses_a_model_the_other_backend_does_not_have(store_env, tmp_path):
    """A numpy ``mlp`` has no torch counterpart: exit 2 and one line before any worker starts."""
    import json

    run = json.loads(tle("--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits:0-2",
                         "--epochs", "1", "--no-export", "--json", env=store_env, cwd=tmp_path,
                         check_rc=0).stdout.strip().splitlines()[-1])
    for target, words in (("torch", ["no model 'mlp'", "resnet_small"]), ("numpy", ["already a numpy run"])):
        proc = tle_inprocess("convert", run["run_id"], "--to", target, env=store_env, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert all(word in proc.stderr for word in words), proc.stderr
