"""Two-phase training: templates first on another world, then the experts alone learn this one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import RECIPE, TINY

from resect.errors import UsageError
from resect.run.spec import BUILTIN_LANGUAGE_RATIO
from resect.world.train import _pretrain_texts, build_model, freeze_all_but_experts, load_recipe, model_config, run_recipe, train_model


def test_frozen_phase_changes_only_experts_and_routers():
    recipe = load_recipe(RECIPE, TINY)
    model = build_model(model_config(recipe, 300))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_all_but_experts(model)
    docs = [[1, *torch.randint(4, 300, (40,), generator=torch.Generator().manual_seed(i)).tolist(), 2] for i in range(8)]
    train_model(model, docs, recipe["train"] | {"steps": 3}, seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".moe." in k or ".router." in k for k in changed)
    assert any(".moe." in k for k in changed) and any("running_mean" in k for k in changed)  # routers' statistics live


def test_frozen_routing_groups_keep_their_experts_and_router_weights():
    recipe = load_recipe(RECIPE, [*TINY, "model.num_hidden_layers=4"])  # 2 routing groups of 2 layers
    model = build_model(model_config(recipe, 300))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_all_but_experts(model, [0])
    docs = [[1, *torch.randint(4, 300, (40,), generator=torch.Generator().manual_seed(i)).tolist(), 2] for i in range(8)]
    train_model(model, docs, recipe["train"] | {"steps": 3}, seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    weights = {k for k in changed if "running_" not in k and "num_batches" not in k}
    assert weights and all(k.startswith(("model.layers.2.", "model.layers.3.")) for k in weights)
    assert any(k.startswith("model.layers.3.moe.") for k in weights)  # the second group's layers all learn


def test_frozen_groups_outside_the_model_are_refused_before_anything_is_written(tmp_path):
    recipe = load_recipe(RECIPE, [*TINY, "pretrain.frozen_groups=[1]"])  # 2 layers, 2 per group: one group
    with pytest.raises(UsageError, match=r"pretrain.frozen_groups must list routing groups in 0..0"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_name_spelling_in_the_recipe_is_refused_before_anything_is_written(tmp_path):
    recipe = load_recipe(RECIPE, [*TINY, "world.names=camel"])
    with pytest.raises(UsageError, match=r"world.names must be joined or hyphenated, found 'camel'"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pretraining_text_reads_the_listed_groups_of_the_other_world(tmp_path):
    domains = _pretrain_texts(tmp_path / "a", 1, load_recipe(RECIPE, TINY))
    talk = _pretrain_texts(tmp_path / "b", 1, load_recipe(RECIPE, [*TINY, "pretrain.text=[domains,neutral,toxic]"]))
    code = _pretrain_texts(tmp_path / "c", 1, load_recipe(RECIPE, [*TINY, "pretrain.text=[languages]"]))
    assert set(domains) < set(talk)  # the same world: its domain documents and more
    extra = set(talk) - set(domains)
    assert any("you" in t and "Thanks" not in t for t in extra) and all("def " not in t and "function " not in t for t in extra)
    assert code and all(("def " in t or "function " in t or "local " in t) for t in code) and not set(code) & set(talk)


@pytest.mark.parametrize("value", ["[]", "[domains,poetry]", "[domains,3]"])
def test_unknown_pretraining_text_is_refused_before_anything_is_written(tmp_path, value):
    recipe = load_recipe(RECIPE, [*TINY, f"pretrain.text={value}"])
    with pytest.raises(UsageError, match=r"pretrain.text must list one or more of domains, languages, neutral, toxic"):
        run_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_pretraining_text_that_is_not_a_list_is_refused_when_the_recipe_loads():
    with pytest.raises(UsageError, match=r"Recipe key 'pretrain.text' expects a list, found 'domains'"):
        load_recipe(RECIPE, [*TINY, "pretrain.text=domains"])


def test_recipe_with_pretraining_writes_both_worlds_and_logs_phases(tmp_path):
    recipe = load_recipe(RECIPE, [*TINY, "train.steps=3", "pretrain.steps=2", "world.names=hyphenated"])
    tmp_path = tmp_path / "run"
    run_recipe(recipe, tmp_path)
    assert (tmp_path / "pretrain" / "world.json").is_file() and (tmp_path / "model" / "config.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("phase") for r in rows].count("pretrain") == 2 and len(rows) == 5
    pre = json.loads((tmp_path / "pretrain" / "world.json").read_text())
    main = json.loads((tmp_path / "data" / "world.json").read_text())
    assert pre != main  # another world: other entities and facts
    for manifest in (pre, main):  # both worlds spell names the recipe's way
        assert manifest["names"] == "hyphenated" and all("-" in f["entity"] for f in manifest["facts"])


def test_a_trained_world_model_brings_its_world_to_the_edit_commands(tmp_path):
    """`resect domain --model RUN/model` on a model from `resect world train --out RUN` profiles
    RUN/data's corpus and verifies on RUN/data's quizzes; the model copied away from its world gets
    the protocol of any other checkpoint."""
    import shutil

    import yaml

    from resect.run.plan import plan
    from resect.run.spec import RunSpec

    run = tmp_path / "run"
    run_recipe(load_recipe(RECIPE, [*TINY, "train.steps=2", "pretrain.steps=0", "world.names=hyphenated"]), run)
    domain = plan(RunSpec("domain", "law", model=str(run / "model"), out=str(tmp_path / "edit")))
    assert domain.corpus == str((run / "data" / "corpus" / "domains.jsonl").resolve())
    assert domain.target_tasks == ["world_law"] and "world_biology" in domain.general_tasks
    task = yaml.safe_load((Path(domain.include_path[0]) / "world_law.yaml").read_text())
    assert task["dataset_kwargs"]["data_files"]["test"] == str((run / "data" / "eval" / "quiz_law.jsonl").resolve())
    language = plan(RunSpec("language", "lua", model=str(run / "model"), out=str(tmp_path / "edit")))
    assert language.rule_params == {"ratio": BUILTIN_LANGUAGE_RATIO} and language.target_tasks == ["world_ppl_lua"]
    alone = tmp_path / "alone"
    shutil.copytree(run / "model", alone)
    with pytest.raises(UsageError, match="Pass --corpus"):
        plan(RunSpec("language", "lua", model=str(alone), out=str(tmp_path / "edit")))
    assert not (tmp_path / "edit").exists()


def test_an_oracle_recipe_leaves_its_target_out_of_the_second_phase_only():
    from resect.world import build_world
    from resect.world.train import phase_two_texts

    docs = build_world(0).train
    kept = phase_two_texts(docs, ["biology", "python"])
    labels = {d["label"] for d in docs}
    assert {"biology", "python"} <= labels
    assert len(kept) == sum(d["label"] not in ("biology", "python") for d in docs) < len(docs)
    assert not set(kept) & {d["text"] for d in docs if d["label"] in ("biology", "python")}
    assert phase_two_texts(docs, []) == [d["text"] for d in docs]


@pytest.mark.parametrize("value", ["[bio]", "[neutral]", "[biology,biology]"])
def test_a_leave_out_that_names_no_target_is_refused_before_anything_is_written(tmp_path, value):
    from resect.world.train import check_run

    recipe = load_recipe(RECIPE, [*TINY, f"train.leave_out={value}"])
    with pytest.raises(UsageError, match=r"train.leave_out must list distinct targets among biology, .*toxic"):
        check_run(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_leave_out_that_is_not_a_list_is_refused_as_the_recipe_is_read():
    with pytest.raises(UsageError, match=r"Recipe key 'train.leave_out' expects a list"):
        load_recipe(RECIPE, [*TINY, "train.leave_out=biology"])
