"""What the project installs and puts on sys.path: no import name that another distribution also uses, and a normal
(non-editable) install that imports and runs.

Why: transformers 5.25 imports Hugging Face's `kernels` package whenever a model class loads, and this project's own
`kernels/` (then at the repository root, first on sys.path) shadowed it, so neither README command ran on a fresh
machine. The names are now `mathrl` (the library) and the three scripts at the top.
"""

import importlib.metadata
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from mathrl import BadValue, MissingFile

OWN_DISTRIBUTION = "mathrl"

# Import names of the common ML stack, whether or not they are installed here: name -> the distribution that owns it
# (kernels: Hugging Face's kernel hub, which transformers imports; distributed: Dask's scheduler).
COMMON_ML = {
    "kernels": "kernels", "distributed": "distributed", "dask": "dask", "datasets": "datasets",
    "evaluate": "evaluate", "accelerate": "accelerate", "peft": "peft", "trl": "trl", "deepspeed": "deepspeed",
    "vllm": "vllm", "flash_attn": "flash-attn", "xformers": "xformers", "bitsandbytes": "bitsandbytes", "ray": "ray",
    "verl": "verl", "math_verify": "math-verify", "latex2sympy2": "latex2sympy2", "wandb": "wandb",
    "tensorboard": "tensorboard", "torch": "torch", "triton": "triton", "transformers": "transformers",
    "tokenizers": "tokenizers", "safetensors": "safetensors", "huggingface_hub": "huggingface-hub", "numpy": "numpy",
    "sympy": "sympy", "scipy": "scipy", "sklearn": "scikit-learn", "pandas": "pandas", "matplotlib": "matplotlib",
    "einops": "einops", "jax": "jax", "flax": "flax", "optax": "optax", "lightning": "lightning",
    "pytorch_lightning": "pytorch-lightning", "sentencepiece": "sentencepiece", "tiktoken": "tiktoken",
    "openai": "openai", "omegaconf": "omegaconf", "hydra": "hydra-core", "mlflow": "mlflow", "tqdm": "tqdm",
    "pytest": "pytest", "nltk": "nltk", "spacy": "spacy", "torchvision": "torchvision", "torchaudio": "torchaudio",
}  # fmt: skip


def module_names(folder: Path) -> set[str]:
    """Top-level import names a folder on sys.path provides: its .py files and its packages (with __init__.py)."""
    return {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}


def project_names() -> set[str]:
    """What running the scripts, the tests and the benchmarks puts on sys.path: the repository root (train.py,
    eval.py, plot.py, mathrl), tests/ (pytest's rootdir insertion) and bench/ (bench_study.py adds it)."""
    return module_names(REPO) | module_names(REPO / "tests") | module_names(REPO / "bench")


def collisions(names: set[str], installed: dict[str, list[str]]) -> dict[str, list[str]]:
    """name -> the other owners of that import name: installed distributions (other than this project), the standard
    library, and the common ML stack."""
    found = {}
    for name in sorted(names):
        owners = [d for d in installed.get(name, []) if d.lower() != OWN_DISTRIBUTION]
        if name in sys.stdlib_module_names:
            owners.append("the standard library")
        if name in COMMON_ML and COMMON_ML[name] not in owners:
            owners.append(COMMON_ML[name])
        if owners:
            found[name] = owners
    return found


def test_collisions_finds_a_shadowed_name():
    installed = {"kernels": ["kernels"], "mathrl": ["mathrl"], "yaml": ["PyYAML"]}
    assert collisions({"kernels", "mathrl", "train", "json", "vllm"}, installed) == {
        "json": ["the standard library"], "kernels": ["kernels"], "vllm": ["vllm"]}  # fmt: skip
    # the real environment: an installed distribution's name is found
    assert collisions({"torch"}, importlib.metadata.packages_distributions())["torch"][0] == "torch"


def test_no_import_name_of_this_project_is_another_distributions():
    names = project_names()
    assert {"train", "eval", "plot", "mathrl", "fake_vllm", "conftest"} <= names
    assert not {"kernels", "distributed", "verify", "engine", "templates"} & names  # the old top-level modules
    assert collisions(names, importlib.metadata.packages_distributions()) == {}


def run(*cmd, cwd, env=None):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_non_editable_install_imports_and_runs(tmp_path):
    """pip builds a wheel from a copy of the sources (setuptools writes build/ beside them) and installs it into a
    scratch folder; the scripts, copied alone into another folder, run against that install (the suite's environment
    supplies the dependencies)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "mathrl", src / "mathrl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src,
        cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("mathrl-*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"mathrl"}  # one import name, nothing else
    assert collisions({"mathrl"}, importlib.metadata.packages_distributions()) == {}
    assert {"mathrl/kernels/logprob_entropy.py", "mathrl/verify.py"} <= set(zipfile.ZipFile(wheel).namelist())

    site, scripts = tmp_path / "site", tmp_path / "scripts"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel, cwd=tmp_path)
    scripts.mkdir()
    for name in ("train.py", "eval.py", "plot.py"):
        (scripts / name).write_text((REPO / name).read_text())
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    modules = "mathrl, mathrl.verify, mathrl.templates, mathrl.engine, mathrl.engine_vllm, mathrl.distributed, " \
              "mathrl.outputs, mathrl.tiny, mathrl.kernels, mathrl.data, mathrl.grading"  # fmt: skip
    where = run(sys.executable, "-c", f"import {modules}, train, eval, plot; print(mathrl.__file__)", cwd=scripts, env=env)
    assert where.strip() == str(site / "mathrl" / "__init__.py")  # the install, not the repository
    for script in ("train.py", "eval.py", "plot.py"):
        assert "usage:" in run(sys.executable, script, "--help", cwd=scripts, env=env)
    assert run(sys.executable, "-m", "mathrl.verify", "\\frac{1}{2}", "0.5", cwd=scripts, env=env).startswith("True")


def main_block(script: Path) -> str:
    """The body of a script's `if __name__ == "__main__":` block, dedented."""
    return textwrap.dedent(script.read_text().split('if __name__ == "__main__":\n', 1)[1])


@pytest.mark.parametrize("script", ["train.py", "eval.py", "plot.py"])
def test_user_errors_are_one_line_and_other_errors_keep_their_traceback(script):
    """The scripts' own `__main__` code, run with a main() that raises: a UserError becomes `error: ...` (exit status
    1, no traceback); a RuntimeError (a shape error in a forked loss, CUDA out of memory) goes through unchanged."""
    namespace = dict(vars(importlib.import_module(script.removesuffix(".py"))))

    def raises(error):
        def main():
            raise error

        return main

    namespace["main"] = raises(BadValue("--group-size 1: need at least 2"))
    with pytest.raises(SystemExit, match=r"error: --group-size 1: need at least 2$"):
        exec(main_block(REPO / script), namespace)
    namespace["main"] = raises(MissingFile("data file x.jsonl not found"))
    with pytest.raises(SystemExit, match="error: data file x.jsonl not found"):
        exec(main_block(REPO / script), namespace)
    namespace["main"] = raises(RuntimeError("The size of tensor a (4) must match the size of tensor b (3)"))
    with pytest.raises(RuntimeError, match="must match"):
        exec(main_block(REPO / script), namespace)
    namespace["main"] = raises(ValueError("a library's ValueError"))  # not the project's own: keeps its traceback
    with pytest.raises(ValueError, match="a library's"):
        exec(main_block(REPO / script), namespace)


def test_a_bad_flag_is_one_line_on_the_command_line():
    proc = subprocess.run([sys.executable, "train.py", "--preset", "tiny", "--group-size", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --group-size 1: group-relative advantages need at least 2 "
                                                "samples per prompt"]  # fmt: skip
