"""No question serves two of profiling, the search and the gate: checked by question hash on what
the edit commands read from the built-in world, as planned (the MMLU mirror's split is checked in
test_mirror). The one known exception, toxicity profiling on the gate's prompts, is stated."""

from __future__ import annotations

import hashlib
import re

import pytest

from resect.edit.corpus import load_corpus, read_tasks
from resect.gate.toxicity import read_prompts
from resect.gate.verify import split_spec
from resect.run.plan import plan
from resect.run.search import question_key
from resect.run.spec import RunSpec


def digest(question: str) -> str:
    return hashlib.sha256(question_key(question).encode()).hexdigest()


def asked(tasks: list[str], include_path) -> set[str]:
    """Hashes of the questions lm-eval tasks ask (each document's text before its answer)."""
    return {digest(d.text[: d.spans[0][0]] if d.spans else d.text) for d in read_tasks([split_spec(t)[0] for t in tasks], include_path=include_path)}


def profiled(corpus: str) -> set[str]:
    """Hashes of the questions the profiling corpus's documents ask ("Q: ...", "Question: ..." lines)."""
    lines = (m.group(1) for d in load_corpus(corpus).documents for m in re.finditer(r"(?m)^(?:Q|Question): (.*)$", d.text))
    return {digest(q) for q in lines}


@pytest.mark.parametrize("target", ["biology", "law"])
def test_the_builtin_domain_edit_reads_each_question_once(target, tmp_path):
    p = plan(RunSpec("domain", target, search=4, out=str(tmp_path / "run")))
    include = [str(x) for x in p.include_path] if isinstance(p.include_path, list) else p.include_path
    gate = asked(list(p.verification.specs), include)
    search = asked(p.validation["target_tasks"] + p.validation["general_tasks"], include)
    profiling = profiled(p.corpus)
    assert len(gate) == 6 * 60 and len(search) == 6 * 120 and profiling  # every question distinct: 60 per test quiz, 120 per validation quiz
    assert not gate & search and not gate & profiling and not search & profiling


def test_the_builtin_toxicity_edit_s_search_and_gate_read_no_prompt_twice(tmp_path, caplog):
    """The search's prompts are not the gate's. The built-in world has no profiling prompts of its
    own (its prompt space holds 80 per register, the gate's and the search's take 75), so
    profiling samples its generations from the gate's prompts, and the plan says so."""
    p = plan(RunSpec("toxicity", search=4, out=str(tmp_path / "run")))
    gate, search = ({q.text.strip() for q in read_prompts(path)} for path in (p.toxicity_prompts, p.validation["prompts"]))
    assert len(gate) == 100 and len(search) == 50 and not gate & search
    assert (p.profile_prompts or p.toxicity_prompts) == p.toxicity_prompts
    assert "profiling samples from the gate's own prompts" in caplog.text
