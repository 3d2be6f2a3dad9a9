"""The modeling file as a citizen of transformers: the generic checks of transformers' model tests
(ModelTesterMixin, GenerationTesterMixin), ported to Monet, each on VD and HD and on unmasked and
masked models; and what a user does with an edited folder without resect (trust_remote_code,
the base model, peft, torch.compile)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from resect.edit.export import apply_masks, model_code
from resect.model.loading import load_model
from resect.model.mask import ExpertMask

TOL = 1e-5


def ids(batch: int = 2, length: int = 11, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


def a_mask(config) -> ExpertMask:
    gen = torch.Generator().manual_seed(7)
    groups = config.num_routing_groups
    return ExpertMask(16, groups, {g: torch.randperm(256, generator=gen)[:80].tolist() for g in range(groups)})


@pytest.fixture(params=["vertical-unmasked", "vertical-masked", "horizontal-unmasked", "horizontal-masked"])
def case(request, tiny_vd, tiny_hd):
    """(checkpoint, model, mask or None): the tiny checkpoint of each decomposition, with and without a mask."""
    ckpt = tiny_vd if request.param.startswith("vertical") else tiny_hd
    model = load_model(ckpt)
    mask = a_mask(model.config) if request.param.endswith("-masked") else None
    model.set_expert_mask(mask)
    return ckpt, model, mask


@pytest.fixture
def edited(case, tmp_path):
    """The case as a folder on disk: an edited checkpoint for a masked case, the source otherwise."""
    ckpt, _, mask = case
    if mask is None:
        return ckpt
    return apply_masks(ckpt, [mask], tmp_path / "edited").path


def logits(model, x=None, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids() if x is None else x, **kwargs).logits


# ---------------------------------------------------------------------------- ModelTesterMixin


def test_save_and_load_give_the_same_model(case, tmp_path):
    _, model, mask = case
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert torch.equal(logits(model), logits(again))
    assert (again.expert_mask_state() is None) == (mask is None)
    if mask is not None:
        assert again.expert_mask_state() == mask and (tmp_path / "saved" / "resect_mask.json").is_file()


def test_forward_is_deterministic(case):
    _, model, _ = case
    assert torch.equal(logits(model), logits(model))


def test_a_batch_equals_its_rows(case):
    _, model, _ = case
    x = ids(batch=3)
    together = logits(model, x)
    for row in range(3):
        torch.testing.assert_close(together[row : row + 1], logits(model, x[row : row + 1]), atol=TOL, rtol=TOL)


def test_left_padding_changes_no_real_token(case):
    _, model, _ = case
    x = ids(batch=1, length=9)
    padded = torch.cat([torch.full((1, 4), 3), x], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    torch.testing.assert_close(logits(model, padded, attention_mask=mask)[:, 4:], logits(model, x), atol=TOL, rtol=TOL)


def test_the_cache_gives_what_a_full_forward_gives(case):
    _, model, _ = case
    x = ids(batch=2, length=12)
    with torch.no_grad():
        first = model(x[:, :8], use_cache=True)
        step = model(x[:, 8:], cache=first.cache, use_cache=True).logits
    torch.testing.assert_close(step, logits(model, x)[:, 8:], atol=TOL, rtol=TOL)


def test_inputs_embeds_equal_input_ids(case):
    _, model, _ = case
    x = ids()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(x)
        from_embeds = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(from_embeds, logits(model, x))


def test_tuple_and_dict_outputs_agree(case):
    _, model, _ = case
    with torch.no_grad():
        as_dict = model(ids(), output_hidden_states=True)
        as_tuple = model(ids(), output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.logits)
    assert len(as_dict.hidden_states) == model.config.num_hidden_layers + 1


def test_config_level_output_flags_are_honoured(case, tmp_path):
    ckpt, _, mask = case
    model = load_model(ckpt, attn_implementation="eager")
    model.set_expert_mask(mask)
    model.config.output_hidden_states = model.config.output_attentions = True
    with torch.no_grad():
        out = model(ids())
        base = model.model(ids())
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers and out.attentions[0].shape[-1] == 11
    assert len(base.hidden_states) == layers + 1
    model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model(ids()), tuple) and isinstance(model.model(ids()), tuple)


def test_resized_token_embeddings_keep_every_old_logit(case):
    _, model, _ = case
    model = copy.deepcopy(model)
    before = logits(model)
    vocab = model.config.vocab_size
    model.resize_token_embeddings(vocab + 8)
    after = logits(model)
    assert after.shape[-1] == vocab + 8 and model.config.vocab_size == vocab + 8
    torch.testing.assert_close(after[..., :vocab], before, atol=TOL, rtol=TOL)


def test_a_training_step_lowers_the_loss_and_every_trained_parameter_gets_a_gradient(case):
    _, model, mask = case
    model = copy.deepcopy(model).train()
    x = ids(batch=2, length=16)
    loss = model(x, labels=x).loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    assert model(x, labels=x).loss < loss


def test_gradient_checkpointing_gives_the_same_gradients(case):
    _, model, _ = case
    plain, checkpointed = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    checkpointed.activation_checkpointing_enable()  # transformers' own mechanism (gradient_checkpointing_enable before 5.x)
    assert checkpointed.is_activation_checkpointing
    x = ids(batch=2, length=16)
    for m in (plain, checkpointed):
        m(x, labels=x, use_cache=False).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_stays_close_to_float32(case):
    ckpt, model, mask = case
    bf = load_model(ckpt, dtype="bfloat16")
    bf.set_expert_mask(mask)
    ref, got = logits(model), logits(bf)
    # on average within bf16's rounding (a rounded logit near the routing threshold may pick another half for one token)
    assert got.dtype == torch.bfloat16 and ((got.float() - ref).abs().mean() / ref.abs().mean()) < 0.02


def test_the_base_model_and_the_head_compute_the_same_hidden_states(case, edited):
    _, model, mask = case
    base = AutoModel.from_pretrained(edited).eval()
    assert type(base).__name__ == "MonetModel" and (base.expert_mask_state() is None) == (mask is None)
    with torch.no_grad():
        torch.testing.assert_close(base(ids()).last_hidden_state, model.model(ids()).last_hidden_state, atol=TOL, rtol=TOL)
        if mask is not None:  # and not the unedited model's
            base.set_expert_mask(None)
            assert not torch.allclose(base(ids()).last_hidden_state, model.model(ids()).last_hidden_state, atol=1e-3)


# ---------------------------------------------------------------------------- GenerationTesterMixin


def test_generation_modes(case):
    _, model, _ = case
    x = ids(batch=1, length=5)
    common = {"max_new_tokens": 6, "pad_token_id": 3}
    with torch.no_grad():
        greedy = model.generate(x, do_sample=False, use_cache=True, **common)
        assert torch.equal(greedy, model.generate(x, do_sample=False, use_cache=False, **common))
        torch.manual_seed(1)
        sampled = model.generate(x, do_sample=True, top_k=20, **common)
        torch.manual_seed(1)
        assert torch.equal(sampled, model.generate(x, do_sample=True, top_k=20, **common))
        beams = model.generate(x, do_sample=False, num_beams=3, num_return_sequences=2, **common)
        scored = model.generate(x, do_sample=False, output_scores=True, return_dict_in_generate=True, **common)
    assert beams.shape == (2, 11) and torch.equal(scored.sequences, greedy) and len(scored.scores) == 6


# ---------------------------------------------------------------------------- an edit cannot be lost silently


def test_a_model_built_from_an_edited_config_by_hand_refuses_to_run(edited, case):
    _, _, mask = case
    if mask is None:
        pytest.skip("an unedited checkpoint has no mask to lose")
    from safetensors.torch import load_file

    config = AutoModelForCausalLM.from_pretrained(edited).config
    by_hand = type(AutoModelForCausalLM.from_pretrained(edited))(config)  # a loader that does not know about masks
    state = {}
    for f in sorted(Path(edited).glob("*.safetensors")):
        state.update(load_file(f))
    by_hand.load_state_dict(state, strict=False)
    with pytest.raises(RuntimeError, match="never applied"), torch.no_grad():
        by_hand(ids())
    by_hand.set_expert_mask(mask)  # once set, it runs the edited model
    torch.testing.assert_close(logits(by_hand.eval()), logits(case[1]), atol=TOL, rtol=TOL)


def test_a_missing_mask_file_is_an_error_not_the_unedited_model(edited, case, tmp_path):
    if case[2] is None:
        pytest.skip("an unedited checkpoint has no mask to lose")
    import shutil

    broken = Path(shutil.copytree(edited, tmp_path / "broken"))
    (broken / "resect_mask.json").unlink()
    for auto in (AutoModel, AutoModelForCausalLM):
        with pytest.raises(OSError, match="cannot be applied"):
            auto.from_pretrained(broken)


# ---------------------------------------------------------------------------- fine-tuning: routing stays as it was


def test_routing_statistics_stay_fixed_in_train_mode_unless_the_router_trains(case):
    _, model, _ = case
    model = copy.deepcopy(model).train()
    norm = model.model.layers[0].router.norm1
    before = (norm.running_mean.clone(), norm.running_var.clone(), int(norm.num_batches_tracked))
    for p in model.parameters():
        p.requires_grad_(False)
    model(ids())
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1]) and int(norm.num_batches_tracked) == before[2]
    model.model.layers[0].router.w1.weight.requires_grad_(True)  # the router's own weights train: its statistics follow the data
    model(ids())
    assert not torch.equal(norm.running_mean, before[0])


def test_a_peft_adapter_saved_and_reloaded_reproduces_the_trained_model(case, edited, tmp_path):
    peft = pytest.importorskip("peft")
    _, _, mask = case
    model = AutoModelForCausalLM.from_pretrained(edited)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], lora_dropout=0.0))
    lora.train()
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    x = ids(batch=2, length=16)
    for _ in range(5):
        optimizer.zero_grad()
        lora(input_ids=x, labels=x).loss.backward()
        optimizer.step()
    lora.eval()
    trained = logits(lora, x)
    lora.save_pretrained(tmp_path / "adapter")
    again = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(edited), tmp_path / "adapter").eval()
    assert (again.base_model.model.expert_mask_state() is None) == (mask is None)
    assert float((logits(again, x) - trained).abs().max()) < 1e-5


# ---------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_a_compiled_forward_is_one_graph_and_equals_eager(case, backend):
    _, model, mask = case
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = ids()
    with torch.no_grad():
        got, want = compiled(x).logits, model(x).logits
    assert float((got - want).abs().max()) < 1e-4
    if mask is not None:  # the masked path ran, not the dense one
        model.set_expert_mask(None)
        assert not torch.allclose(got, logits(model, x), atol=1e-3)
        model.set_expert_mask(mask)


# ---------------------------------------------------------------------------- the shipped folders, without resect

BLOCKED = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):  # this interpreter cannot import resect at all
        def find_spec(self, name, path, target=None):
            if name == "resect" or name.startswith("resect."):
                raise ImportError("resect is blocked in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    folder, x = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(x).logits
        hidden = base(x).last_hidden_state
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x).logits
    mask = model.expert_mask_state()
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__, "removed": 0 if mask is None else mask.total,
                      "base_removed": 0 if base.expert_mask_state() is None else base.expert_mask_state().total,
                      "logits": logits.tolist(), "hidden": hidden.tolist(), "compiled": float((compiled - logits).abs().max()),
                      "resect": [m for m in sys.modules if m == "resect" or m.startswith("resect.")]}))
    """
)


def run_without_resect(folder: Path, x: torch.Tensor, cwd: Path) -> dict:
    env = {**os.environ, "HF_MODULES_CACHE": str(cwd / "modules"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(folder), json.dumps(x.tolist())], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_an_edited_folder_loads_compiles_and_keeps_its_mask_without_resect(tiny_vd, tmp_path):
    mask = a_mask(load_model(tiny_vd).config)
    edited = apply_masks(tiny_vd, [mask], tmp_path / "edited").path
    report = run_without_resect(edited, ids(), tmp_path)
    model = load_model(tiny_vd)
    model.set_expert_mask(mask)
    assert report["module"].startswith("transformers_modules") and report["resect"] == [] and report["base"] == "MonetModel"
    assert report["removed"] == report["base_removed"] == mask.total and report["compiled"] < 1e-4
    assert float((torch.tensor(report["logits"]) - logits(model)).abs().max()) < TOL
    with torch.no_grad():
        assert float((torch.tensor(report["hidden"]) - model.model(ids()).last_hidden_state).abs().max()) < TOL


@pytest.mark.slow
def test_the_built_in_folder_loads_with_plain_transformers_from_anywhere(tmp_path):
    from resect.builtin import builtin_model_path

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = run_without_resect(builtin_model_path(), ids(length=6), elsewhere)
    assert report["resect"] == [] and report["removed"] == 0
    assert float((torch.tensor(report["logits"]) - logits(load_model(None), ids(length=6))).abs().max()) < TOL


def test_the_built_in_folder_carries_the_current_modeling_code():
    from resect.builtin import builtin_model_path

    folder = builtin_model_path()
    config = json.loads((folder / "config.json").read_text())
    stale = [name for name, text in model_code().items() if not (folder / name).is_file() or (folder / name).read_text() != text]
    assert not stale, f"{stale} are stale: python -c 'from resect.edit.export import bundle_code; from resect.builtin import builtin_model_path; bundle_code(builtin_model_path())'"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
