"""What a newcomer standing in the repository root meets: the project's own `kernels/` folder never
hides another distribution's `kernels` package, and `import resect` stays light while still
teaching transformers the Monet architecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


pytestmark = pytest.mark.slow  # each test starts fresh Python processes


def test_the_repository_root_hides_no_installed_package():
    """Run from the root on purpose: the current folder comes first on sys.path there."""
    assert not (ROOT / "kernels" / "__init__.py").exists()  # a regular package there would win the import
    res = python(
        "import importlib.util, json, kernels, resect.kernels.dispatch as d;"
        "import transformers.modeling_utils;"  # imports Hugging Face's kernels when installed
        "print(json.dumps([getattr(kernels, '__file__', None), d.__file__, importlib.util.find_spec('kernels').origin]))",
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    top, dispatch, origin = json.loads(res.stdout)
    assert Path(dispatch).resolve() == ROOT / "kernels" / "dispatch.py"  # resect's kernels come from the folder
    if origin is not None:  # Hugging Face's `kernels` is installed (transformers 5 requires it)
        assert top is not None and ROOT / "kernels" not in Path(top).resolve().parents, top
        assert Path(origin).resolve() == Path(top).resolve()


@pytest.mark.parametrize("args", [["--help"], ["info"]])
def test_python_dash_m_resect_works_from_the_root(args):
    res = subprocess.run([sys.executable, "-m", "resect", *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert ("routing groups" in res.stdout) if args == ["info"] else ("domain" in res.stdout)


def test_import_resect_is_light_and_still_registers_monet(tmp_path):
    """No torch or transformers at `import resect`; transformers' auto classes know Monet afterwards."""
    res = python(
        "import sys, resect; light = not ({'torch', 'transformers'} & set(sys.modules));"
        "from transformers import AutoConfig, AutoModelForCausalLM;"
        "from resect.builtin import builtin_model_path;"
        "m = AutoModelForCausalLM.from_pretrained(builtin_model_path());"
        "print(light, type(AutoConfig.from_pretrained(builtin_model_path())).__module__, type(m).__module__)",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["True", "resect.model.configuration_monet", "resect.model.modeling_monet"]


def test_transformers_imported_first_still_learns_monet(tmp_path):
    res = python(
        "from transformers import AutoModelForCausalLM; import resect;"
        "from resect.builtin import builtin_model_path;"
        "print(type(AutoModelForCausalLM.from_pretrained(builtin_model_path())).__name__)",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "MonetForCausalLM"


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="needs torchrun")
def test_torchrun_profile_works_from_the_root(tiny_vd, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Line {k} of the quick brown fox.", "label": "ab"[k % 2]}) for k in range(6)))
    out = tmp_path / "stats.safetensors"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "resect", "profile", str(tiny_vd),
           "--corpus", str(corpus), "--out", str(out), "--batch-size", "2"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": "1"}, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.is_file()
