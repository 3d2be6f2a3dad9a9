"""Training a small VD Monet on the generated world (the built-in model's recipe).

One recipe (YAML, dotted `key=value` overrides) drives everything: generate the world, train a
byte-level BPE tokenizer on its training text, train the model with the paper's auxiliary
losses (uniformity and ambiguity, lambda 1e-3) while the router's BatchNorm statistics are live
(router in train mode, during training only), then save a published-style checkpoint, a loss
log and a loss-curve PNG.

    out/data/      the generated world (resect.world)
    out/pretrain/  the other world of the pretraining phase (when pretrain.steps > 0)
    out/model/     config.json, model.safetensors, tokenizer files
    out/train_log.jsonl, out/loss.png
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

from ..errors import UsageError, unknown

log = logging.getLogger(__name__)

DEFAULT_RECIPE: dict[str, Any] = {
    "seed": 0,
    "world": {"seed": 0, "entities": 20, "names": "hyphenated"},  # names: joined (Rixquor) | hyphenated (Rix-quor)
    "tokenizer": {"vocab_size": 2048},
    "model": {
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "moe_experts": 256,
        "moe_heads": 4,
        "moe_dim": 4,
        "moe_topk": 8,
        "moe_groups": 2,
        "max_position_embeddings": 256,
    },
    # Phase 1 (when steps > 0): the whole model learns the templates of ANOTHER world's domain text.
    # Phase 2 (train): attention, embeddings and norms are frozen and only the experts and routers
    # learn this world, so its facts, code and registers live in experts: what expert ablation cuts.
    # text: which of the other world's training documents phase 1 reads (the groups of pretrain_groups()).
    "pretrain": {"steps": 250, "world_seed": 1, "warmup": 50, "frozen_groups": [], "text": ["domains", "neutral"]},
    "train": {
        "steps": 500,
        "batch_size": 32,
        "block_size": 128,
        "lr": 2.0e-3,
        "min_lr_ratio": 0.1,
        "warmup": 30,
        "weight_decay": 0.01,
        "grad_clip": 1.0,
        "uniformity": 1.0e-3,
        "ambiguity": 1.0e-3,
        "threads": 1,
        "log_every": 10,
        "save_dtype": "bfloat16",
        # targets whose documents phase 2 never reads (a domain, a language, "toxic"): an oracle, the
        # model that never learnt them (the tokenizer and phase 1 stay those of the full recipe)
        "leave_out": [],
    },
}

StepCallback = Callable[[int, int, dict[str, float]], None]  # (step, total, metrics)


# --- recipe -------------------------------------------------------------------------------------


def _merge(base: dict, update: dict, path: str = "") -> dict:
    """Deep-merge `update` into a copy of `base`; keys unknown to `base` are errors."""
    out = deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise UsageError(unknown("recipe key", f"{path}{key}", [f"{path}{k}" for k in base]))
        out[key] = _merge(base[key], value, f"{path}{key}.") if isinstance(base[key], dict) else _typed(base[key], value, path + key)
    return out


def _typed(default: Any, value: Any, key: str) -> Any:
    """`value` converted to the type of the recipe's default (YAML reads '1e-4' as a string)."""
    try:
        if isinstance(default, bool) or default is None or isinstance(value, type(default)) and not isinstance(value, bool):
            return value
        if isinstance(default, float) and not isinstance(value, bool):
            return float(value)
    except ValueError:
        pass
    raise UsageError(f"Recipe key '{key}' expects a {type(default).__name__}, found {value!r}.")


def parse_overrides(items: list[str]) -> dict:
    """['train.steps=20', 'model.hidden_size=64'] -> nested dict (values parsed as YAML scalars)."""
    from ..files import load_yaml

    nested: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"Override '{item}' is not key=value. Write e.g. train.steps=20.")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = load_yaml(value, where=f"Override '{item}': the value")
    return nested


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """The default recipe, updated by a YAML file and then by dotted overrides."""
    from ..files import JSON_BYTES, load_yaml, read_text

    recipe = DEFAULT_RECIPE
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"Recipe '{path}' does not exist. Pass a YAML file such as recipes/world.yaml.")
        loaded = load_yaml(read_text(path, what="Recipe", max_bytes=JSON_BYTES), where=f"Recipe '{path}'") or {}
        if not isinstance(loaded, dict):
            raise UsageError(f"Recipe '{path}' must be a YAML mapping, found {type(loaded).__name__}.")
        recipe = _merge(recipe, loaded)
    return _merge(recipe, parse_overrides(overrides or []))


# --- model and data -----------------------------------------------------------------------------


def model_config(recipe: dict, vocab_size: int) -> dict[str, Any]:
    """A published-style config.json for the recipe's model."""
    from ..model.tiny import tiny_config

    model = recipe["model"]
    return tiny_config(
        decompose="vertical",
        **model,
        num_key_value_heads=model["num_attention_heads"],
        vocab_size=vocab_size,
        torch_dtype=recipe["train"]["save_dtype"],
    )


def monet_config(config: dict[str, Any]):
    """The MonetConfig of a config.json dict; a UsageError (one line) when it describes no Monet model."""
    from huggingface_hub.errors import StrictDataclassError

    from ..model.configuration_monet import MonetConfig

    keys = {k: v for k, v in config.items() if k not in ("architectures", "auto_map", "torch_dtype", "transformers_version")}
    try:
        return MonetConfig(**keys)
    except (TypeError, ValueError, StrictDataclassError) as exc:
        cause = str(exc.__cause__ or exc).splitlines()[0]
        raise UsageError(f"The recipe's model is not a valid Monet model ({cause}). Fix its model.* keys.") from None


def build_model(config: dict[str, Any]):
    from ..model.modeling_monet import MonetForCausalLM

    return MonetForCausalLM(monet_config(config))


def train_tokenizer(texts: list[str], out: Path, vocab_size: int):
    """Byte-level BPE trained on the training text, saved in HF format; returns the loaded tokenizer."""
    from transformers import AutoTokenizer

    from ..model.tiny import train_tokenizer as _train

    _train(out, vocab_size=vocab_size, texts=texts)
    return AutoTokenizer.from_pretrained(out)


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each document as <s> ids </s>."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id, *doc, tokenizer.eos_token_id] for doc in ids]


def batches(docs: list[list[int]], *, batch_size: int, block_size: int, seed: int):
    """Endless [batch_size, block_size] LongTensors: documents reshuffled each epoch, packed, chunked."""
    import random

    import torch

    rng, epoch = random.Random(seed), 0
    while True:
        order = list(range(len(docs)))
        rng.shuffle(order)
        stream = torch.tensor([t for i in order for t in docs[i]], dtype=torch.long)
        blocks = stream[: len(stream) // block_size * block_size].view(-1, block_size)  # [N, block]
        for start in range(0, len(blocks) - batch_size + 1, batch_size):
            yield blocks[start : start + batch_size]
        epoch += 1


# --- losses -------------------------------------------------------------------------------------


def auxiliary_losses(router_probs: tuple) -> tuple:
    """Uniformity and ambiguity losses averaged over router layers and both sides.

    Uniformity: -mean_{h,e} log(E * mean_t g[t,h,e]), zero when every half is used equally.
    Ambiguity: mean_{t,h} (1 - max_e g[t,h,e]), zero when each head picks one half decisively.
    """
    import torch

    unif, amb, n = 0.0, 0.0, 0
    for probs in router_probs:
        if probs is None:
            continue
        for g in probs:  # [B, T, H, E]
            usage = g.flatten(0, 1).mean(0)  # [H, E]
            unif = unif + -(torch.log(usage * g.shape[-1] + 1e-9)).mean()
            amb = amb + (1 - g.amax(-1)).mean()
            n += 1
    return unif / n, amb / n


def lr_at(step: int, train: dict) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < train["warmup"]:
        return train["lr"] * (step + 1) / train["warmup"]
    progress = (step - train["warmup"]) / max(1, train["steps"] - train["warmup"])
    floor = train["min_lr_ratio"]
    return train["lr"] * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# --- loop ---------------------------------------------------------------------------------------


def train_model(model, docs: list[list[int]], train: dict, *, seed: int, on_step: StepCallback | None = None) -> list[dict]:
    """Train in place (router BatchNorm live); returns the log rows. Leaves the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    model.train()  # only place the router runs in train mode: its BatchNorm statistics update here
    for module in model.modules():  # pretraining: every router's statistics follow the data, trained weights or frozen ones
        if hasattr(module, "track_statistics"):
            module.track_statistics = True
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": other, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=train["lr"], betas=(0.9, 0.95))
    stream, rows, start = batches(docs, batch_size=train["batch_size"], block_size=train["block_size"], seed=seed), [], time.time()
    for step in range(train["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train)
        x = next(stream)  # [B, block]
        out = model(x, labels=x, output_router_probs=True, use_cache=False)
        unif, amb = auxiliary_losses(out.router_probs)
        loss = out.loss + train["uniformity"] * unif + train["ambiguity"] * amb
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
        opt.step()
        metrics = {"loss": out.loss.item(), "uniformity": unif.item(), "ambiguity": amb.item(), "lr": lr_at(step, train)}
        if step % train["log_every"] == 0 or step == train["steps"] - 1:
            rows.append({"step": step, **metrics, "seconds": round(time.time() - start, 1)})
            log.info("step %d loss %.4f", step, metrics["loss"])
        if on_step:
            on_step(step + 1, train["steps"], metrics)
    model.eval()
    for module in model.modules():  # the saved model's routers: the default again (fixed unless their weights train)
        if hasattr(module, "track_statistics"):
            module.track_statistics = None
    return rows


def save_checkpoint(model, config: dict[str, Any], out: Path, dtype: str) -> None:
    """Published-style folder: config.json + model.safetensors (weights cast to `dtype`)."""
    import torch

    from ..model.tiny import save_shards

    cast = getattr(torch, dtype)
    state = {k: (v.to(cast) if v.is_floating_point() and "running_" not in k else v).contiguous() for k, v in model.state_dict().items()}
    for file in save_shards(state, out, shards=1):
        (out / file).chmod(0o644)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_world(folder: Path, seed: int, recipe: dict, located_at: Path | None = None) -> Path:
    """The world of `seed`, sized and spelled as the recipe's `world` section says."""
    from . import Sizes, write_world

    return write_world(folder, seed, sizes=Sizes(entities=recipe["world"]["entities"]), names=recipe["world"]["names"], located_at=located_at)


def pretrain_groups() -> dict[str, tuple[str, ...]]:
    """The groups `pretrain.text` may list, each with its training-document labels."""
    from . import DOMAINS, LANGUAGES

    return {"domains": tuple(DOMAINS), "languages": tuple(LANGUAGES), "neutral": ("neutral",), "toxic": ("toxic",)}


def _pretrain_texts(folder: Path, seed: int, recipe: dict, located_at: Path | None = None) -> list[str]:
    """Another world's documents of the recipe's `pretrain.text` groups (other entities and facts,
    the same templates, code idioms and registers)."""
    from . import read_train

    groups = pretrain_groups()
    labels = {label for group in recipe["pretrain"]["text"] for label in groups[group]}
    return [d["text"] for d in read_train(_write_world(folder, seed, recipe, located_at)) if d["label"] in labels]


def leavable() -> tuple[str, ...]:
    """What `train.leave_out` may name: each domain, each language, the toxic register."""
    from . import DOMAINS, LANGUAGES

    return (*DOMAINS, *LANGUAGES, "toxic")


def phase_two_texts(documents: list[dict], leave_out: Iterable[str]) -> list[str]:
    """The training documents the second phase reads: every one whose label is not left out."""
    left = set(leave_out)
    return [d["text"] for d in documents if d["label"] not in left]


def freeze_all_but_experts(model, frozen_groups: Iterable[int] = ()) -> None:
    """Only the expert layers and routers keep learning (attention, embeddings, norms, head frozen),
    and not even those of the routing groups in `frozen_groups` (whose routers' BatchNorm running
    statistics still follow the data: only weights are frozen)."""
    per_group, frozen = model.config.moe_groups, set(frozen_groups)
    for index, layer in enumerate(model.model.layers):
        frozen_layer = index // per_group in frozen
        for name, param in layer.named_parameters():
            param.requires_grad_(not frozen_layer and (name.startswith("moe.") or name.startswith("router.")))
    for name, param in model.named_parameters():
        if not name.startswith("model.layers."):
            param.requires_grad_(False)


def plot_loss(rows: list[dict], out: Path) -> None:
    """Loss curve PNG (training cross-entropy per logged step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", yscale="log", title="Built-in Monet: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def check_run(recipe: dict, out: Path) -> None:
    """What would stop `run_recipe` before it writes anything: an existing model folder, a model
    section that describes no Monet model, frozen groups the model does not have."""
    from ..model.mask import geometry
    from ..ownership import check_output

    check_output(out, kind="train", force=None, make_parents=True)
    from ..model.checkpoint import shape_problem

    at_least = {("world", "entities"): 1, ("tokenizer", "vocab_size"): 1, ("pretrain", "steps"): 0, ("pretrain", "warmup"): 0,
                ("train", "steps"): 1, ("train", "batch_size"): 1, ("train", "block_size"): 2, ("train", "warmup"): 0,
                ("train", "threads"): 1, ("train", "log_every"): 1}  # fmt: skip
    for (section, key), low in at_least.items():
        if recipe[section][key] < low:
            raise UsageError(f"{section}.{key} must be at least {low}, found {recipe[section][key]}.")
    from .generate import check_names

    check_names(recipe["world"]["names"], "world.names")
    if not recipe["train"]["lr"] > 0:
        raise UsageError(f"train.lr must be positive, found {recipe['train']['lr']}.")
    problem = shape_problem(recipe["model"])
    if problem:
        raise UsageError(f"The recipe's model is not a valid Monet model ({problem}). Fix its model.* keys.")
    monet_config(model_config(recipe, recipe["tokenizer"]["vocab_size"]))
    text, known = recipe["pretrain"]["text"], pretrain_groups()
    if not isinstance(text, list) or not text or any(not isinstance(g, str) or g not in known for g in text):
        raise UsageError(f"pretrain.text must list one or more of {', '.join(known)}, found {text!r}.")
    left, targets = recipe["train"]["leave_out"], leavable()
    if not isinstance(left, list) or any(not isinstance(t, str) or t not in targets for t in left) or len(set(left)) != len(left):
        raise UsageError(f"train.leave_out must list distinct targets among {', '.join(targets)}, found {left!r}.")
    groups = geometry(recipe["model"])[1]
    if any(not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < groups for g in recipe["pretrain"]["frozen_groups"]):
        raise UsageError(f"pretrain.frozen_groups must list routing groups in 0..{groups - 1}, found {recipe['pretrain']['frozen_groups']}.")


def run_recipe(recipe: dict, out: str | Path, *, data: str | Path | None = None, on_step: StepCallback | None = None) -> Path:
    """Generate (or reuse `data`), train, and write a new folder `out` (data/, model/, the log and
    the loss curve; resect.outputs: a work folder, moved into place when training ends); returns the model folder."""
    from ..outputs import claim

    out = Path(out)
    check_run(recipe, out)
    with claim(out, "train", inputs=[data], force=None) as c:
        work = c.work_folder()
        with c.naming_the_output():
            _train_into(recipe, work, Path(out).absolute(), data, on_step)
        c.finish(work)
    return out / "model"


def _train_into(recipe: dict, work: Path, final: Path, data: str | Path | None, on_step: StepCallback | None) -> None:
    import torch

    from . import read_train

    torch.set_num_threads(recipe["train"]["threads"])
    torch.manual_seed(recipe["seed"])
    if data is None:
        data = _write_world(work / "data", recipe["world"]["seed"], recipe, located_at=final / "data")
    documents = read_train(data)
    texts = [d["text"] for d in documents]  # the tokenizer reads all of them, so an oracle shares the full model's
    pre = recipe["pretrain"]
    pre_texts = _pretrain_texts(work / "pretrain", pre["world_seed"], recipe, final / "pretrain") if pre["steps"] > 0 else []
    model_dir = work / "model"
    model_dir.mkdir()
    tokenizer = train_tokenizer(texts + pre_texts, model_dir, recipe["tokenizer"]["vocab_size"])
    config = model_config(recipe, len(tokenizer))
    model = build_model(config)
    log.info("model: %.2fM parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    rows = []
    if pre_texts:
        schedule = recipe["train"] | {"steps": pre["steps"], "warmup": pre["warmup"]}
        rows = train_model(model, encode_documents(tokenizer, pre_texts), schedule, seed=recipe["seed"] + 1, on_step=on_step)
        rows = [r | {"phase": "pretrain"} for r in rows]
        freeze_all_but_experts(model, pre["frozen_groups"])
    kept = phase_two_texts(documents, recipe["train"]["leave_out"])
    rows += train_model(model, encode_documents(tokenizer, kept), recipe["train"], seed=recipe["seed"], on_step=on_step)
    save_checkpoint(model, config, model_dir, recipe["train"]["save_dtype"])
    (work / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_loss(rows, work / "loss.png")
    (model_dir / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
