"""The mechanics of `resect probe`: fine-tuning a model on a few examples, and reading answers out
of its hidden states.

`tuned(model, tokenizer, texts, tuning)` trains the model in memory on the texts (LoRA adapters
on every linear layer through peft, the field's standard attack, or every weight) and yields it
for evaluation; on leaving, the adapters are removed (or the weights put back), so the next
attack starts from the same model. An edited model keeps its mask while it trains: the masked
forward corrects the routing sums before any projection runs, so no adapter can route through a
removed expert.

`readout(model, tokenizer, rows, folds)` is the representation probe: per layer, a multinomial
logistic regression from the last token's hidden state to the answer, trained on the other
folds' facts and scored on the held-out fold's (accuracy over the attribute's own values).
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import UsageError

LORA_TARGETS = "all-linear"


@dataclass(frozen=True)
class Tuning:
    """How a relearning attack trains (Łucki et al. 2024's defaults: LoRA r 128, alpha 16, lr 2e-4, 3 epochs)."""

    method: str = "lora"  # or "full"
    rank: int = 128
    alpha: float = 16.0
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 8
    max_length: int = 128

    def record(self) -> dict:
        return dict(self.__dict__)


METHODS = ("lora", "full")


def require_peft() -> None:
    """LoRA needs peft: one line naming the extra that installs it."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UsageError("The relearning probes train LoRA adapters through the package 'peft', which is not installed. "
                         "Install it: pip install 'resect[probe]' (or pass --method full).") from None  # fmt: skip


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their attention mask, [rows, longest] each."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)], attn[k, : len(r)] = torch.tensor(r), 1
    return ids, attn


def _batches(tokenizer, texts: list[str], tuning: Tuning, seed: int, device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per epoch, the texts shuffled by the seed, padded into batches with their loss labels."""
    pad = _pad_id(tokenizer)
    encoded = [tokenizer(t, truncation=True, max_length=tuning.max_length)["input_ids"] for t in texts]
    rng, out = random.Random(seed), []
    for _ in range(tuning.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order), tuning.batch_size):
            ids, attn = _padded([encoded[j] for j in order[i : i + tuning.batch_size]], pad)
            labels = ids.masked_fill(attn == 0, -100)
            out.append((ids.to(device), attn.to(device), labels.to(device)))
    return out


@contextlib.contextmanager
def tuned(model, tokenizer, texts: list[str], tuning: Tuning, *, seed: int = 0, progress: Callable | None = None) -> Iterator[torch.nn.Module]:
    """The model trained on `texts`, for the duration of the block; afterwards it is as it was."""
    device = next(model.parameters()).device
    batches = _batches(tokenizer, texts, tuning, seed, device)
    torch.manual_seed(seed)  # LoRA's initial A matrices
    saved, wrapped = None, None
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # transformers' notice to peft
    if tuning.method == "lora":
        from peft import LoraConfig, get_peft_model

        wrapped = get_peft_model(model, LoraConfig(r=tuning.rank, lora_alpha=tuning.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS))
        trained = wrapped.base_model.model  # the Monet model itself, its linear layers carrying adapters
        params = [p for p in wrapped.parameters() if p.requires_grad]
    else:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(True)
        trained, params = model, [p for p in model.parameters() if p.is_floating_point()]
    try:
        optimizer = torch.optim.AdamW(params, lr=tuning.lr, weight_decay=0.0)
        with torch.enable_grad():
            for step, (ids, attn, labels) in enumerate(batches, 1):
                loss = trained(input_ids=ids, attention_mask=attn, labels=labels).loss
                if not math.isfinite(loss.item()):
                    raise UsageError(f"Relearning diverged (loss {loss.item()}) at step {step}. Lower --lr.")
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if progress:
                    progress(step, len(batches))
        del optimizer
        with torch.no_grad():
            yield trained
    finally:
        if wrapped is not None:
            wrapped.unload()  # the adapters out, the original layers back, nothing merged
        else:
            model.load_state_dict(saved)
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])


def steps_of(examples: int, tuning: Tuning) -> int:
    """Optimizer steps one attack on `examples` texts takes."""
    return tuning.epochs * math.ceil(examples / tuning.batch_size)


# ----------------------------------------------------------------------------- representation


@torch.no_grad()
def last_hidden_states(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[layers + 1, texts, hidden]: each layer's hidden state at each text's last token (float32)."""
    device = next(model.parameters()).device
    pad, out = _pad_id(tokenizer), []
    for i in range(0, len(texts), batch_size):
        ids, attn = _padded([tokenizer(t)["input_ids"] for t in texts[i : i + batch_size]], pad)
        states = model(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True).hidden_states
        last = attn.sum(1) - 1
        out.append(torch.stack([h[torch.arange(len(ids)), last.to(h.device)].float().cpu() for h in states]))
    return torch.cat(out, dim=1)


READOUT_STEPS = 300
READOUT_DECAY = 1e-2  # fixed in advance (no data chooses it): L2 on the standardised features' weights


def _fit_predict(x: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor, train: torch.Tensor, seed: int) -> torch.Tensor:
    """A multinomial logistic regression on the training rows; the held-out rows' predictions,
    each among its attribute's values (`allowed`: [rows, classes] bool)."""
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(z.shape[1], allowed.shape[1], generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(allowed.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(READOUT_STEPS):
            logits = (z[train] @ w + b).masked_fill(~allowed[train], -1e9)
            loss = torch.nn.functional.cross_entropy(logits, y[train]) + READOUT_DECAY * (w * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (z[~train] @ w + b).masked_fill(~allowed[~train], -1e9).argmax(1)


def readout(states: torch.Tensor, rows: list[dict], folds: list[int], *, seed: int = 0) -> list[list[int]]:
    """Per layer, whether each question's answer was read right from its hidden states (1 or 0, in
    row order) by a probe trained on the other folds' facts; `rows` from
    resect.world.probesets.readout_questions, `folds` their facts' folds."""
    values, by_attr = sorted({r["value"] for r in rows}), _values_by_attribute(rows)
    y = torch.tensor([values.index(r["value"]) for r in rows])
    allowed = torch.tensor([[v in by_attr[r["attribute"]] for v in values] for r in rows])
    fold = torch.tensor(folds)
    out = []
    for layer in range(states.shape[0]):
        right = torch.zeros(len(rows), dtype=torch.long)
        for k in sorted(set(folds)):
            train = fold != k
            right[~train] = (_fit_predict(states[layer], y, allowed, train, seed + k) == y[~train]).long()
        out.append(right.tolist())
    return out


def _values_by_attribute(rows: list[dict]) -> dict[str, set[str]]:
    """The answers each attribute takes among the rows: what a question's prediction chooses from."""
    by_attr: dict[str, set[str]] = {}
    for r in rows:
        by_attr.setdefault(r["attribute"], set()).add(r["value"])
    return by_attr


def readout_chance(rows: list[dict]) -> float:
    """Accuracy of guessing uniformly among each question's attribute values, in points."""
    by_attr = _values_by_attribute(rows)
    return 100.0 * sum(1 / len(by_attr[r["attribute"]]) for r in rows) / len(rows)


__all__ = ["METHODS", "Tuning", "last_hidden_states", "readout", "readout_chance", "require_peft", "steps_of", "tuned"]
