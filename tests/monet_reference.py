"""A naive Monet written from the spec alone, for tests: every expert (i, j) summed explicitly.

Independent of resect's model code: it reads the raw state dict and config.json, routes with its own
router and expands the full w[i, j] product, so it is slow and only fit for tiny models.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, positions, theta):
    """x: [B, heads, T, hd] rotated by half-split RoPE."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = positions[:, None].double() * inv[None]  # [T, hd/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def attention(sd, prefix, x, cfg):
    B, T, D = x.shape
    nh = cfg["num_attention_heads"]
    hd = D // nh
    q, k, v = (
        (x @ sd[f"{prefix}self_attn.{p}_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2) for p in "qkv"
    )
    pos = torch.arange(T)
    q, k = rope(q, pos, cfg["rope_theta"]), rope(k, pos, cfg["rope_theta"])
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    return out @ sd[f"{prefix}self_attn.o_proj.weight"].T


def route(sd, prefix, x, cfg):
    """Spec steps 1-4: g1, g2 [B, T, H, E]."""
    H, E = cfg["moe_heads"], cfg["moe_experts"]
    sigma = NormalDist().inv_cdf(1 - cfg["moe_topk"] / E)
    gates = []
    for w, norm in (("w1", "norm1"), ("w2", "norm2")):
        z = (x @ sd[f"{prefix}router.{w}.weight"].T).view(*x.shape[:-1], H, E).float()
        mean = sd[f"{prefix}router.{norm}.running_mean"][:, None]
        var = sd[f"{prefix}router.{norm}.running_var"][:, None]
        n = (z - mean) / torch.sqrt(var + 1e-5)
        s = torch.minimum(n.max(-1, keepdim=True).values, torch.tensor(sigma))
        gates.append(torch.softmax(torch.where(n >= s, z, torch.full_like(z, -1e10)), -1))
    return gates


def expert_weights(g1, g2):
    """w[b, t, i, j] = sum_h g1[h, i] g2[h, j], the full expansion."""
    return torch.einsum("bthi,bthj->btij", g1, g2)


def experts_output(sd, prefix, x, w, cfg, mask=None):
    """sum_ij w[i, j] (1 - M[i, j]) E_ij(x), every expert computed on its own."""
    E, m, D = cfg["moe_experts"], cfg["moe_dim"], cfg["hidden_size"]
    p = prefix + "moe."
    relu2 = lambda t: torch.relu(t) ** 2  # noqa: E731
    keep = torch.ones(E, E) if mask is None else 1.0 - mask.float()
    out = torch.zeros(*x.shape[:-1], D)
    if cfg["moe_decompose"] == "vertical":
        h = m // 2
        a1 = relu2(x @ sd[p + "u1.weight"].T + sd[p + "u1.bias"]).view(*x.shape[:-1], E, h)
        a2 = relu2(x @ sd[p + "u2.weight"].T + sd[p + "u2.bias"]).view(*x.shape[:-1], E, h)
        v = {n: sd[p + n + ".weight"] for n in ("v11", "v12", "v21", "v22")}
        for i in range(E):
            for j in range(E):
                si, sj = slice(i * h, (i + 1) * h), slice(j * h, (j + 1) * h)
                top = a1[..., i, :] @ v["v11"][:, si].T + a2[..., j, :] @ v["v12"][:, si].T + sd[p + "b1"][i]
                bottom = a1[..., i, :] @ v["v21"][:, sj].T + a2[..., j, :] @ v["v22"][:, sj].T + sd[p + "b2"][j]
                out += (w[..., i, j] * keep[i, j])[..., None] * torch.cat([top, bottom], -1)
    else:
        a = relu2(x @ sd[p + "u.weight"].T + sd[p + "u.bias"]).view(*x.shape[:-1], E, m)
        for i in range(E):
            for j in range(E):
                e_ij = a[..., i, :] @ sd[p + "v.weight"][:, j * m : (j + 1) * m].T + sd[p + "b"][j]
                out += (w[..., i, j] * keep[i, j])[..., None] * e_ij
    return out


def reference_forward(sd, cfg, input_ids, masks=None):
    """Logits [B, T, V] and router probs per router layer {layer: (g1, g2)}; masks {group: [E, E] bool}."""
    sd = {k: v.float() for k, v in sd.items()}
    eps = cfg["rms_norm_eps"]
    x = sd["model.embed_tokens.weight"][input_ids]
    probs = {}
    for layer in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        x = x + attention(sd, prefix, rms_norm(x, sd[prefix + "input_layernorm.weight"], eps), cfg)
        normed = rms_norm(x, sd[prefix + "post_attention_layernorm.weight"], eps)
        if layer % cfg["moe_groups"] == 0:
            g1, g2 = route(sd, prefix, normed, cfg)
            probs[layer] = (g1, g2)
        group = layer // cfg["moe_groups"]
        mask = None if masks is None else masks.get(group)
        x = x + experts_output(sd, prefix, normed, expert_weights(g1, g2), cfg, mask)
    x = rms_norm(x, sd["model.norm.weight"], eps)
    return x @ sd["lm_head.weight"].T, probs
