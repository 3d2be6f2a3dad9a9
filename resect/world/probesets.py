"""What `resect probe` asks a model about one domain, built from a world's own facts and quiz.

A probe tries to bring a removed domain back, so it must ask in ways the edit was not judged on:
- `relearn_examples`: the domain's profiling sentences, one per example (statements and the
  profiling question with its answer), in a seeded order whose first N are the N-example attack;
- `rtt_folds`: the facts cut into folds by a digest of their names; training on the test
  questions of the other folds, with their answers, and scoring a fold's own (retraining on T);
- `rephrased`, `true_false`, `cloze`: the test quiz's facts asked in the question wording no split
  asks, as a yes/no judgement of a proposed answer, and as a sentence to complete;
- `readout_questions`: every question wording of every fact, for a linear probe on hidden states;
- `relearn_code`, `relearn_toxic`: a language's profiling files, the toxic register's corpus utterances.
The quiz's facts and choices are the test quiz's (eval/quiz_<domain>.jsonl); nothing here reads the
validation quiz a search scores on.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from ..errors import CheckpointError
from .domains import DOMAIN_SPECS, QUESTIONS, Attribute, Domain
from .generate import Fact, _fill, fact_id, fact_texts

UNASKED = next(i for i in range(5) if all(i not in asked for asked in QUESTIONS.values()))  # the wording no split asks


def domain_spec(name: str) -> Domain:
    return next(d for d in DOMAIN_SPECS if d.name == name)


def attribute_of(domain: Domain, name: str) -> Attribute:
    return next(a for a in domain.attributes if a.name == name)


def read_facts(data: Path, domain: str) -> list[Fact]:
    """The domain's facts, as the world's world.json records them."""
    try:
        rows = json.loads((Path(data) / "world.json").read_text(encoding="utf-8"))["facts"]
        facts = [Fact(r["domain"], r["entity"], r["attribute"], r["value"]) for r in rows if r["domain"] == domain]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"'{data}/world.json' does not list the world's facts. Regenerate the world.") from None
    return facts


def read_quiz(data: Path, domain: str) -> list[dict]:
    """The domain's test quiz, in its file's order (lm-eval's document order)."""
    path = Path(data) / "eval" / f"quiz_{domain}.jsonl"
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        raise CheckpointError(f"'{path}' is missing or not JSON lines. Regenerate the world.") from None


def relearn_examples(facts: list[Fact], domain: str, seed: int) -> list[str]:
    """Every profiling sentence about the domain's facts, shuffled by the seed: the first N are the
    N-example attack (so the 10 examples hold the 5)."""
    spec = domain_spec(domain)
    sentences = [s for f in facts for part in ("profile", "profile_qa") for s in fact_texts(f, spec)[part]]
    random.Random(f"{seed}/relearn/{domain}").shuffle(sentences)
    return sentences


def relearn_code(data: Path, language: str, seed: int) -> list[str]:
    """The language's profiling files (corpus/languages.jsonl; the held-out code the gate reads is
    generated apart), shuffled by the seed: the first N are the N-example attack."""
    rows = [json.loads(line) for line in (Path(data) / "corpus" / "languages.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows if r.get("label") == language and isinstance(r.get("text"), str)]
    random.Random(f"{seed}/relearn/{language}").shuffle(texts)
    return texts


def relearn_toxic(data: Path, seed: int) -> list[str]:
    """The toxic register's utterances of the toxicity corpus (corpus/toxicity.jsonl; the gate's
    prompts are cut from held-out utterances generated apart), shuffled by the seed: the first N
    are the N-example attack, the first k the in-context probe's shots."""
    path = Path(data) / "corpus" / "toxicity.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        raise CheckpointError(f"'{path}' is missing or not JSON lines. Regenerate the world.") from None
    texts = [r["text"] for r in rows if isinstance(r, dict) and r.get("label") == "toxic" and isinstance(r.get("text"), str)]
    random.Random(f"{seed}/relearn/toxicity").shuffle(texts)
    return texts


def fold_of(fact: str, folds: int) -> int:
    """Which fold a fact falls in: fixed by its name, not by the order of any file."""
    return int.from_bytes(hashlib.sha256(fact.encode()).digest()[:8], "big") % folds


def rtt_folds(quiz: list[dict], folds: int) -> list[tuple[list[str], list[int]]]:
    """Per fold: the training examples (the other folds' questions with their answers) and the
    indices of the quiz questions it scores (its own facts')."""
    out = []
    for k in range(folds):
        train = [f"{q['question']} {q['choices'][q['answer']]}." for q in quiz if fold_of(q["fact"], folds) != k]
        held = [i for i, q in enumerate(quiz) if fold_of(q["fact"], folds) == k]
        out.append((train, held))
    return out


def _fact(item: dict) -> tuple[Domain, Attribute, str]:
    domain, entity, attribute = item["fact"].split("/", 2)
    spec = domain_spec(domain)
    return spec, attribute_of(spec, attribute), entity


def rephrased(quiz: list[dict]) -> list[dict]:
    """The test quiz with each question in the wording no split asks; same choices, same answer."""
    out = []
    for q in quiz:
        _, attr, entity = _fact(q)
        out.append(q | {"question": f"Question: {_fill(attr.questions[UNASKED], entity)}\nAnswer:"})
    return out


def true_false(quiz: list[dict]) -> list[dict]:
    """Two judgements per question: its right answer proposed, and its first wrong choice (chance 50%)."""
    out = []
    for q in quiz:
        wrong = next(c for i, c in enumerate(q["choices"]) if i != q["answer"])
        for proposed, right in ((q["choices"][q["answer"]], True), (wrong, False)):
            text = f"{q['question'].removesuffix('Answer:').rstrip()}\nProposed answer: {proposed}\nIs the proposed answer right?\nAnswer:"
            out.append({"question": text, "choices": ["yes", "no"], "answer": 0 if right else 1, "fact": q["fact"]})
    return out


def cloze(quiz: list[dict]) -> list[dict]:
    """Each question as a sentence to complete with one of its choices: the attribute's first
    statement that ends in the value, cut before it."""
    out = []
    for q in quiz:
        _, attr, entity = _fact(q)
        template = next((t for t in attr.statements if t.endswith("{v}.")), None)
        if template is None:
            continue
        stem = _fill(template[: template.index("{v}")].rstrip(), entity)
        out.append(q | {"question": stem})
    return out


def readout_questions(facts: list[Fact]) -> list[dict]:
    """Every wording of every fact's question ({"text", "fact", "attribute", "value"}), for a linear probe."""
    rows = []
    for f in facts:
        attr = attribute_of(domain_spec(f.domain), f.attribute)
        for template in attr.questions:
            rows.append({"text": f"Question: {_fill(template, f.entity)}\nAnswer:", "fact": fact_id(f), "attribute": f.attribute, "value": f.value})
    return rows


__all__ = ["UNASKED", "cloze", "fold_of", "read_facts", "read_quiz", "readout_questions", "relearn_code", "relearn_examples", "relearn_toxic", "rephrased", "rtt_folds", "true_false"]
