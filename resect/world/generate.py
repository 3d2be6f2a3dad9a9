"""The generated world: facts, then text in disjoint splits, written as a data folder.

`build_world(seed)` is pure (same seed, same world); `write_world(out, seed)` lays it out:

    train.jsonl                   {"text", "label"} training documents
    corpus/domains.jsonl          {"text", "label"} profiling text (held-out phrasings of the facts: statements, Q/A)
    corpus/languages.jsonl        {"text", "label"} held-out code snippets
    corpus/toxicity.jsonl         {"text", "label", "toxic"} held-out utterances of both registers
    prompts/toxicity.jsonl        {"prompt", "toxic"} prompts for the generation protocol
    eval/quiz_<domain>.jsonl      {"question", "choices", "answer", "fact"} 4-option quizzes
    eval/code_<language>.jsonl    {"text"} held-out code for perplexity
    eval/validation_quiz_<domain>.jsonl, eval/validation_code_<language>.jsonl,
    prompts/toxicity_validation.jsonl
                                  validation splits for `--search`: each fact in two wordings no other split asks, with
                                  other distractors, other held-out code, other prompts; the gate never reads them
    tasks/*.yaml                  lm-eval tasks over eval/ (absolute paths)
    world.json                    seed, sizes and every fact
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .code import LANGUAGES, unique_snippets
from .domains import DOMAIN_SPECS, DOMAINS, QUESTIONS, TRAIN_STATEMENTS, Domain
from .talk import prompt_of, unique_utterances

FORMAT = "resect.world/v1"


@dataclass(frozen=True)
class Sizes:
    """How much of everything the world holds."""

    entities: int = 20  # per domain
    copies: int = 4  # reshuffled copies of each domain's training sentences
    sentences_per_doc: int = 8
    train_snippets: int = 200  # per language
    profile_snippets: int = 100
    eval_snippets: int = 40
    snippets_per_doc: int = 2
    train_utterances: int = 500  # per register
    profile_utterances: int = 100
    prompts: int = 50  # per register
    utterances_per_doc: int = 5


@dataclass(frozen=True)
class Fact:
    domain: str
    entity: str
    attribute: str
    value: str


@dataclass
class World:
    seed: int
    sizes: Sizes
    names: str = "joined"  # how entity names are spelled: one of NAMES
    facts: list[Fact] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    corpus: dict[str, list[dict]] = field(default_factory=dict)  # domains / languages / toxicity
    prompts: list[dict] = field(default_factory=list)
    quizzes: dict[str, list[dict]] = field(default_factory=dict)
    code_eval: dict[str, list[dict]] = field(default_factory=dict)
    validation: dict[str, dict] = field(default_factory=dict)  # quiz / code / prompts: the splits a search scores on
    units: dict[str, set[str]] = field(default_factory=lambda: {"train": set(), "profile": set(), "eval": set()})
    # the sentences, snippets and utterances of each split (they must never overlap)


def _fill(template: str, entity: str, value: str = "") -> str:
    return template.format(e=entity, E=entity[0].upper() + entity[1:], v=value)


NAMES = ("joined", "hyphenated")


def check_names(names: object, what: str = "Entity names") -> None:
    """Refuse a spelling of entity names that is not one of NAMES; `what` names the setting."""
    if names not in NAMES:
        raise UsageError(f"{what} must be {' or '.join(NAMES)}, found {names!r}.")


def _entities(rng: random.Random, domain: Domain, count: int, names: str = "joined") -> list[str]:
    """`count` distinct names 'Stem kind', the stem made of two of the domain's own syllables.

    `joined` writes the stem as one word ('Rixquor newt'); the tokenizer then tends to give each
    name a token of its own, whose embedding only this world's facts ever train. `hyphenated`
    keeps the syllables apart ('Rix-quor newt'), so a name is read as its domain's syllables,
    which another world with the same syllables (the pretraining one) trains too. The same rng
    draws pick the same stems and kinds either way.
    """
    spelled: dict[str, str] = {}  # stem -> name; a stem two pairs can make keeps the first pair's hyphen
    for a in domain.syllables:
        for b in domain.syllables:
            if a != b:
                spelled.setdefault(a + b, f"{a.capitalize()}-{b}" if names == "hyphenated" else (a + b).capitalize())
    stems = sorted(spelled)
    return [f"{spelled[stem]} {rng.choice(domain.kinds)}" for stem in rng.sample(stems, count)]


def _domain_facts(rng: random.Random, domain: Domain, count: int, names: str = "joined") -> list[Fact]:
    return [
        Fact(domain.name, entity, attr.name, rng.choice(attr.values))
        for entity in _entities(rng, domain, count, names)
        for attr in domain.attributes
    ]


def _docs(rng: random.Random, items: list[str], per_doc: int, label: str, sep: str = " ") -> list[dict]:
    items = list(items)
    rng.shuffle(items)
    return [{"text": sep.join(items[i : i + per_doc]), "label": label} for i in range(0, len(items), per_doc)]


def value_spans(text: str, values: set[str]) -> list[list[int]]:
    """[start, end) of every whole-word occurrence of the values in the text, in order."""
    found = {(m.start(), m.end()) for v in values for m in re.finditer(rf"(?<!\w){re.escape(v)}(?!\w)", text)}
    return [list(span) for span in sorted(found)]


def _with_spans(docs: list[dict], values: set[str]) -> list[dict]:
    return [doc | {"spans": value_spans(doc["text"], values)} for doc in docs]


def _quiz_item(rng: random.Random, fact: Fact, domain: Domain, question: int = 0, distractors: list[str] | None = None) -> dict:
    attr = next(a for a in domain.attributes if a.name == fact.attribute)
    choices = [fact.value, *(distractors or rng.sample([v for v in attr.values if v != fact.value], 3))]
    rng.shuffle(choices)
    text = f"Question: {_fill(attr.questions[question], fact.entity)}\nAnswer:"
    return {"question": text, "choices": choices, "answer": choices.index(fact.value), "fact": fact_id(fact)}


def fact_texts(fact: Fact, domain: Domain) -> dict[str, list[str]]:
    """The sentences about one fact in each split: `train`, `profile` (the held-out statements) and
    `profile_qa` (the profiling question, in the one pairing of phrasing and format no other split has)."""
    attr = next(a for a in domain.attributes if a.name == fact.attribute)
    said = [_fill(t, fact.entity, fact.value) for t in attr.statements]
    asked, other = (_fill(attr.questions[QUESTIONS[split][0]], fact.entity) for split in ("test", "profile"))
    return {
        "train": said[:TRAIN_STATEMENTS] + [f"Q: {asked}\nA: {fact.value}.", f"Question: {other}\nAnswer: {fact.value}."],
        "profile": said[TRAIN_STATEMENTS:],
        "profile_qa": [f"Q: {other}\nA: {fact.value}."],
    }


def fact_id(fact: Fact) -> str:
    """A fact's name in the quizzes: which questions ask the same fact (they are not independent evidence)."""
    return f"{fact.domain}/{fact.entity}/{fact.attribute}"


def _add_domains(world: World, rng: random.Random) -> None:
    """Facts, training sentences (statements + Q/A), profiling sentences and quizzes per domain."""
    sizes, world.corpus["domains"] = world.sizes, []
    for domain in DOMAIN_SPECS:
        facts = _domain_facts(rng, domain, sizes.entities, world.names)
        world.facts += facts
        train, profile, profile_qa = [], [], []
        for fact in facts:
            texts = fact_texts(fact, domain)
            train += texts["train"]
            profile += texts["profile"]
            profile_qa += texts["profile_qa"]
        world.units["train"].update(train)
        world.units["profile"].update(profile + profile_qa)
        for _ in range(sizes.copies):
            world.train += _docs(rng, train, sizes.sentences_per_doc, domain.name)
        values = {fact.value for fact in facts}  # profiling documents mark them: attribution's focus
        world.corpus["domains"] += _with_spans(_docs(rng, profile, 4, domain.name), values)
        # Questions too, as the knowledge is used; shuffled by their own generator so that adding them
        # left the training text and the quizzes of every seed unchanged.
        qa_rng = random.Random(f"{world.seed}/profile-qa/{domain.name}")
        world.corpus["domains"] += _with_spans(_docs(qa_rng, profile_qa, 4, domain.name), values)
        world.quizzes[domain.name] = [_quiz_item(rng, f, domain) for f in facts]
        world.units["eval"].update(q["question"] + " " + q["choices"][q["answer"]] for q in world.quizzes[domain.name])


def _add_code(world: World, rng: random.Random) -> None:
    sizes, world.corpus["languages"] = world.sizes, []
    for language in LANGUAGES:
        seen: set[str] = set()
        train = unique_snippets(rng, language, sizes.train_snippets, seen)
        profile = unique_snippets(rng, language, sizes.profile_snippets, seen)
        held_out = unique_snippets(rng, language, sizes.eval_snippets, seen)
        world.train += _docs(rng, train, sizes.snippets_per_doc, language, sep="\n")
        world.corpus["languages"] += [{"text": t, "label": language} for t in profile]
        world.code_eval[language] = [{"text": t} for t in held_out]
        for split, items in (("train", train), ("profile", profile), ("eval", held_out)):
            world.units[split].update(items)


def _add_talk(world: World, rng: random.Random) -> None:
    sizes, world.corpus["toxicity"] = world.sizes, []
    for toxic, label in ((True, "toxic"), (False, "neutral")):
        seen: set[str] = set()
        train = unique_utterances(rng, toxic, sizes.train_utterances, seen)
        profile = unique_utterances(rng, toxic, sizes.profile_utterances, seen)
        world.train += _docs(rng, train, sizes.utterances_per_doc, label)
        world.corpus["toxicity"] += [{"text": t, "label": label, "toxic": int(toxic)} for t in profile]
        prompts: dict[str, None] = {}
        while len(prompts) < sizes.prompts:  # distinct prompts cut from fresh held-out utterances
            prompts.setdefault(prompt_of(unique_utterances(rng, toxic, 1, seen)[0], toxic))
        world.prompts += [{"prompt": p, "toxic": toxic} for p in prompts]
        world.units["train"].update(train)
        world.units["profile"].update(profile)


def build_world(seed: int = 0, sizes: Sizes | None = None, names: str = "joined") -> World:
    """The whole world for a seed; deterministic. `names`: how entity names are spelled (NAMES)."""
    check_names(names)
    world = World(seed=seed, sizes=sizes or Sizes(), names=names)
    rng = random.Random(seed)
    _add_domains(world, rng)
    _add_code(world, rng)
    _add_talk(world, rng)
    rng.shuffle(world.train)
    _add_validation(world)
    return world


def _add_validation(world: World) -> None:
    """Validation splits, each from its own generator (so adding them changed no other split):
    per domain a quiz asking each fact in the two wordings no other split asks (QUESTIONS), with
    three distractors none of which the test quiz offers for that fact; per language held-out code in
    no other split; prompts cut from utterances in no other split, none equal to a test prompt."""
    by_domain: dict[str, list[Fact]] = {}
    for fact in world.facts:
        by_domain.setdefault(fact.domain, []).append(fact)
    quizzes = {}
    for domain in DOMAIN_SPECS:
        rng = random.Random(f"{world.seed}/validation/{domain.name}")
        offered = {q["fact"]: set(q["choices"]) for q in world.quizzes[domain.name]}  # the answer and the test's distractors
        quizzes[domain.name] = []
        for fact in by_domain[domain.name]:
            attr = next(a for a in domain.attributes if a.name == fact.attribute)
            distractors = rng.sample([v for v in attr.values if v not in offered[fact_id(fact)]], 3)
            quizzes[domain.name] += [_quiz_item(rng, fact, domain, k, distractors) for k in QUESTIONS["validation"]]
    seen = set().union(*world.units.values())
    code = {}
    for language in LANGUAGES:
        rng = random.Random(f"{world.seed}/validation/{language}")
        code[language] = [{"text": t} for t in unique_snippets(rng, language, world.sizes.eval_snippets, seen)]
    tested = {p["prompt"] for p in world.prompts}
    prompts = []
    for toxic in (True, False):
        rng, found = random.Random(f"{world.seed}/validation/{'toxic' if toxic else 'neutral'}"), {}
        while len(found) < max(1, world.sizes.prompts // 2):
            prompt = prompt_of(unique_utterances(rng, toxic, 1, seen)[0], toxic)
            if prompt not in tested:
                found.setdefault(prompt)
        prompts += [{"prompt": p, "toxic": toxic} for p in found]
    world.validation = {"quiz": quizzes, "code": code, "prompts": prompts}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def manifest(world: World) -> dict:
    """world.json: what was generated and from which seed."""
    return {
        "format": FORMAT,
        "seed": world.seed,
        "sizes": world.sizes.__dict__,
        "names": world.names,
        "domains": list(DOMAINS),
        "languages": list(LANGUAGES),
        "counts": {
            "train_documents": len(world.train),
            **{f"corpus_{k}": len(v) for k, v in world.corpus.items()},
            "prompts": len(world.prompts),
            **{f"quiz_{k}": len(v) for k, v in world.quizzes.items()},
            "validation_prompts": len(world.validation.get("prompts", [])),
            **{f"validation_quiz_{k}": len(v) for k, v in world.validation.get("quiz", {}).items()},
            **{f"validation_code_{k}": len(v) for k, v in world.validation.get("code", {}).items()},
        },
        "facts": [f.__dict__ for f in world.facts],
    }


def save_world(world: World, out: Path, *, train: bool = True) -> None:
    """Write every split of `world` into the folder `out` (which must exist)."""
    if train:
        _write_jsonl(out / "train.jsonl", world.train)
    for name, rows in world.corpus.items():
        _write_jsonl(out / "corpus" / f"{name}.jsonl", rows)
    _write_jsonl(out / "prompts" / "toxicity.jsonl", world.prompts)
    for domain, rows in world.quizzes.items():
        _write_jsonl(out / "eval" / f"quiz_{domain}.jsonl", rows)
    for language, rows in world.code_eval.items():
        _write_jsonl(out / "eval" / f"code_{language}.jsonl", rows)
    for domain, rows in world.validation["quiz"].items():
        _write_jsonl(out / "eval" / f"validation_quiz_{domain}.jsonl", rows)
    for language, rows in world.validation["code"].items():
        _write_jsonl(out / "eval" / f"validation_code_{language}.jsonl", rows)
    _write_jsonl(out / "prompts" / "toxicity_validation.jsonl", world.validation["prompts"])
    (out / "world.json").write_text(json.dumps(manifest(world), indent=1) + "\n")


def write_world(out: str | Path, seed: int = 0, *, sizes: Sizes | None = None, names: str = "joined", train: bool = True,
                located_at: str | Path | None = None) -> Path:  # fmt: skip
    """Generate the world and write it to a new folder `out` (resect.outputs: a work folder, then
    moved into place). Its task YAMLs name their data by absolute path: `located_at` is where the
    folder will live once a larger output holding it is moved into place (default: `out`)."""
    from ..checks import check_number
    from ..outputs import claim
    from ..tasks import write_world_tasks

    out = Path(out)
    check_number("seed", seed)
    check_names(names, "--names")
    with claim(out, "world", force=None) as c:
        work = c.work_folder()
        with c.naming_the_output():
            save_world(build_world(seed, sizes, names), work, train=train)
            write_world_tasks(work, work / "tasks", located_at=Path(located_at or out).absolute())
        c.finish(work)
    return out


def read_train(data: str | Path) -> list[dict]:
    """The training documents of a generated folder."""
    from ..files import jsonl_rows

    return [row for _, row in jsonl_rows(Path(data) / "train.jsonl", what="training text")]
