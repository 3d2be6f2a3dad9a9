"""Masked expert layer in pure torch: the production path on CPU (and the fallback anywhere).

Depends on torch only: edited checkpoints carry a verbatim copy of this file
(`monet_masking.py`) so that they load through `trust_remote_code=True` without resect.

With the mask M of a routing group ([E, E], True = removed; or a removed fraction in [0, 1]) and
w'[i,j] = w[i,j] (1 - M[i,j]),
the layer needs the row and column sums R, C and the mixed activations P, Q of w' (see
`MonetMoVDE.project_top / project_bottom`). Each is its unmasked value minus a correction over
the removed pairs:

    dR[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j]        dP[i] = sum_h g1[h,i] sum_j M[i,j] g2[h,j] a2_j
    dC[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i]        dQ[j] = sum_h g2[h,j] sum_i M[i,j] g1[h,i] a1_i

The column side is the row side with g1 <-> g2 and M -> M^T, so one routine serves both.
g1 and g2 are sparse (per head only the halves above the routing threshold are > 0), so a
correction only visits each (token, head)'s active pairs, K_own x K_other of them: extra work
~ H * K1 * K2 * m per token, never [tokens, H, E*E]. Halves with no removed partner (an empty
mask row or column) are dropped first, so clustered masks cost less and an empty mask nothing.
Rows (token, head) are sorted by their number of active pairs and processed in chunks padded to
the chunk's own counts, with temporaries bounded by a fraction of one activation tensor; the
corrections are scatter-subtracted in place, in the dense forward's order, so the peak memory
stays near the dense layer's (see benchmarks/bench_masking.py).

Shapes: N tokens (B*T flattened), H heads, E halves per side, K active halves (padded),
m the activation width (m/2 for VD), R rows (token, head) in a chunk.
"""

from __future__ import annotations

import hashlib
import weakref

import torch

# Chunk budgets, as fractions of one activation tensor: VD corrections run while the layer holds
# one activation tensor less than at its peak, HD corrections run at the peak.
HEADROOM_VD, HEADROOM_HD = 2, 16


_PREPARED: dict[int, tuple] = {}  # id(tensor) -> (weak reference, version, {key: value})


def prepared(tensor: torch.Tensor, key, make):
    """`make(tensor)`, computed once per tensor object (and again after it is modified in place):
    a layer's mask is the same tensor at every forward, and the layers of a routing group share
    their gates, while decoding runs thousands of forwards. (Inference tensors, whose changes are
    not counted, are router outputs that nothing modifies.)"""
    version = 0 if tensor.is_inference() else tensor._version
    entry = _PREPARED.get(id(tensor))
    if entry is None or entry[0]() is not tensor or entry[1] != version:
        entry = (weakref.ref(tensor), version, {})
        _PREPARED[id(tensor)] = entry
        weakref.finalize(tensor, _PREPARED.pop, id(tensor), None)
    if key not in entry[2]:
        entry[2][key] = make(tensor)
    return entry[2][key]


def active_halves(g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero gates of each row of g [R, E], largest first, padded: values, indices [R, k].

    k must be at least the largest nonzero count of a row. The active halves come first, so a
    row's first k' >= its count entries hold them all; padding carries value 0 (contributes nothing).
    """
    return g.topk(k, dim=-1, sorted=True)


def side_corrections(
    removed: torch.Tensor, v_own: torch.Tensor, i_own: torch.Tensor, v_other: torch.Tensor, i_other: torch.Tensor,
    acts: torch.Tensor, token: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Removed share of each active half of a chunk of (token, head) rows.

    removed [E, E] bool, True = removed (a view of a contiguous matrix, maybe transposed), indexed
    [own, other]; v_own, i_own [R, Ko]; v_other, i_other [R, Kt]; acts [N, E, m] the other
    side's activations; token [R] -> d_sums [R, Ko], d_mixed [R, Ko, m].
    """
    experts, width = removed.shape[-1], acts.shape[-1]
    pairs = (i_own * removed.stride(0)).unsqueeze(-1) + (i_other * removed.stride(1)).unsqueeze(-2)  # [R, Ko, Kt]
    block = removed.as_strided((experts * experts,), (1,)).take(pairs)  # [R, Ko, Kt] bool: the mask this row sees
    del pairs
    # sum_b M[a,b] g_other[b] [acts_b, 1], then times g_own[a]: the mixed term and the plain sum at once
    gathered = acts.view(-1, width).index_select(0, (token.unsqueeze(-1) * experts + i_other).flatten())
    scaled = torch.cat((gathered, gathered.new_ones(gathered.shape[0], 1)), dim=1).view(*i_other.shape, width + 1)
    scaled.mul_(v_other.unsqueeze(-1))  # [R, Kt, m + 1]
    both = (block.to(scaled.dtype) @ scaled).mul_(v_own.unsqueeze(-1))  # [R, Ko, m + 1]
    return both[..., width], both[..., :width]


def chunks(k_own: list[int], k_other: list[int], *, width: int, budget: int) -> list[tuple[int, int, int, int]]:
    """Split rows (sorted by active count) into (start, end, Ko, Kt) whose temporaries fit the budget."""
    cost = lambda ko, kt: 13 * ko * kt + 4 * (ko + kt) * (width + 1) + 24 * (ko + kt)  # noqa: E731  bytes of one row
    out, start, ko, kt = [], 0, 1, 1
    for row, (a, b) in enumerate(zip(k_own, k_other)):
        wider_o, wider_t = max(ko, a), max(kt, b)
        if row > start and (row - start + 1) * cost(wider_o, wider_t) > budget:
            out.append((start, row, ko, kt))
            start, wider_o, wider_t = row, max(a, 1), max(b, 1)
        ko, kt = wider_o, wider_t
    out.append((start, len(k_own), ko, kt))
    return out


def subtract_side(
    mask, own, other, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, budget: int, compute=side_corrections
) -> None:
    """sums [N, E] -= d_sums and mixed [N, E, m] -= d_mixed, scattered at each row's own halves.

    own, other: `Halves` of the two gates; mask [E, E] indexed [own, other]; acts [N, E, m] the
    other side's activations; budget: bytes the temporaries of one chunk of rows may take;
    compute: `side_corrections` or a kernel with the same signature. Rows (token, head) go in
    order of their number of active pairs, so a chunk pads to counts close to its own.
    """
    experts, width = sums.shape[-1], mixed.shape[-1]
    flat_sums, flat_mixed = sums.view(-1), mixed.view(-1, width)
    for start, end, ko, kt in chunks(own.sorted_counts, other.sorted_counts, width=width, budget=budget):
        rows = own.order[start:end]
        token = rows // own.heads
        v_own, i_own = own.values[rows, :ko], own.index[rows, :ko].long()  # [R, Ko]
        v_other, i_other = other.values[rows, :kt], other.index[rows, :kt].long()  # [R, Kt]
        d_sums, d_mixed = compute(mask, v_own, i_own, v_other, i_other, acts, token)
        where = (token.unsqueeze(-1) * experts + i_own).flatten()  # [R*Ko] positions in [N*E]
        flat_sums.index_put_((where,), d_sums.flatten().neg().to(sums.dtype), accumulate=True)
        flat_mixed.index_put_((where,), d_mixed.flatten(0, 1).neg_().to(mixed.dtype), accumulate=True)


class Halves:
    """The active halves of one gate tensor, compacted once and shared by both sides.

    g [N*H, E] gates, live [E] bool: the halves with at least one removed partner (the others
    cannot contribute a correction and are skipped). values [N*H, K] largest first, index [N*H, K]
    int16/int32, counts [N*H]; `order` and `sorted_counts` are set by `paired_halves`.
    """

    STEP = 256  # rows per compaction step: keeps the [rows, E] temporaries small

    def __init__(self, g: torch.Tensor, live: torch.Tensor, heads: int):
        rows, experts = g.shape
        self.heads = heads
        steps = range(0, rows, self.STEP)
        self.counts = torch.cat([((g[s : s + self.STEP] > 0) & live).sum(-1) for s in steps])  # [N*H]
        k = max(int(self.counts.max()), 1)
        small = torch.int16 if experts <= torch.iinfo(torch.int16).max else torch.int32
        parts = [(g[s : s + self.STEP] * live).topk(k, dim=-1) for s in steps]  # active halves first
        self.values = torch.cat([v for v, _ in parts])
        self.index = torch.cat([i.to(small) for _, i in parts])
        self.order, self.sorted_counts = torch.zeros(0, dtype=torch.long), []

    def sort_by(self, order: torch.Tensor) -> None:
        self.order, self.sorted_counts = order, self.counts[order].tolist()


def paired_halves(g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> tuple[Halves, Halves]:
    """Halves of g1 and g2 [N, H, E], rows ordered by active pairs K1 * K2 (ascending); only halves
    with a removed partner in mask [E, E] (row i for g1, column j for g2) are kept (every half of
    a floating-point mask, whose gradient reaches every routed pair)."""
    n, heads, experts = g1.shape
    if mask.is_floating_point():  # every routed pair: d out / d F[i,j] is nonzero even where F[i,j] = 0
        rows = cols = torch.ones(experts, dtype=torch.bool, device=mask.device)
    else:
        rows, cols = mask.any(1), mask.any(0)
    h1 = Halves(g1.reshape(n * heads, experts), rows, heads)
    h2 = Halves(g2.reshape(n * heads, experts), cols, heads)
    order = torch.argsort(h1.counts * h2.counts)
    h1.sort_by(order)
    h2.sort_by(order)
    return h1, h2


class SparseCorrections:
    """Subtracts the removed share from unmasked sums, one side at a time (torch, chunked).

    g1, g2 [N, H, E] gates, mask [E, E] bool (True = removed); the halves are compacted on first
    use and shared by both sides. `masked_numba.FusedCorrections` has the same interface.
    """

    def __init__(self, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, *, compute=side_corrections):
        self.g1, self.g2, self.mask, self.compute = g1, g2, mask, compute
        self.halves: tuple[Halves, Halves] | None = None

    def subtract(self, column: bool, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, budget: int) -> None:
        """Row side (R, P; acts = a2) or column side (C, Q; acts = a1): sums [N, E], mixed [N, E, m] in place."""
        if self.halves is None:
            self.halves = paired_halves(self.g1, self.g2, self.mask)
        h1, h2 = self.halves
        own, other, mask = (h2, h1, self.mask.T) if column else (h1, h2, self.mask)
        subtract_side(mask, own, other, sums=sums, mixed=mixed, acts=acts, budget=budget, compute=self.compute)


# ---------------------------------------------------------------------------- under torch.compile
# The corrections depend on how many halves each (token, head) routes to, which no compiled graph can
# know: under torch.compile they run as one custom operator per side, opaque to the compiler, whose
# output shapes are known ([N, E] and [N, E, m]); everything around it compiles (fullgraph=True holds).
# The operator runs the same code as the eager path, with the kernel named (`KERNELS`).

KERNELS: dict[str, dict] = {"torch": {"compute": side_corrections}}  # numba and triton add themselves when imported
_NAMESPACE = "monet_" + hashlib.sha1(__name__.encode()).hexdigest()[:12]  # one per copy of this file (resect's, an edited folder's)


def _side_correction_eager(g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor, column: bool, budget: int,
                           kernel: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The removed share of one side, negated: (sums [N, E], mixed [N, E, m]) to add. g1, g2
    [B, T, H, E] as the router gave them; acts [N, E, m] (N = B*T) in the layer's dtype."""
    n, experts, width = acts.shape[0], g1.shape[-1], acts.shape[-1]
    sums = torch.zeros(n, experts, dtype=acts.dtype, device=acts.device)
    mixed = torch.zeros(n, experts, width, dtype=acts.dtype, device=acts.device)
    chosen = KERNELS.get(kernel, KERNELS["torch"])
    if "corrections" in chosen:
        fix = chosen["corrections"](g1, g2, mask)
    else:
        fix = SparseCorrections(g1.to(acts.dtype).flatten(0, 1), g2.to(acts.dtype).flatten(0, 1), mask, compute=chosen["compute"])
    fix.subtract(column, sums=sums, mixed=mixed, acts=acts, budget=budget)
    return sums, mixed


try:
    side_correction = torch.library.custom_op(f"{_NAMESPACE}::side_correction", mutates_args=())(_side_correction_eager)

    @side_correction.register_fake
    def _(g1, g2, mask, acts, column, budget, kernel):
        n, experts, width = acts.shape[0], g1.shape[-1], acts.shape[-1]
        return acts.new_empty(n, experts), acts.new_empty(n, experts, width)
except RuntimeError:  # this copy imported twice (a reload): the operator it defined stands
    side_correction = getattr(torch.ops, _NAMESPACE).side_correction


class OpaqueCorrections:
    """`SparseCorrections` for a compiled graph: each side is one call of `side_correction`.

    g1, g2 [B, T, H, E] as the router gave them, mask [E, E] bool; `kernel` names the
    implementation inside the operator."""

    def __init__(self, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, kernel: str = "torch"):
        self.g1, self.g2, self.mask, self.kernel = g1, g2, mask, kernel

    def subtract(self, column: bool, *, sums: torch.Tensor, mixed: torch.Tensor, acts: torch.Tensor, budget: int) -> None:
        d_sums, d_mixed = side_correction(self.g1, self.g2, self.mask, acts, column, budget, self.kernel)
        sums.add_(d_sums)
        mixed.add_(d_mixed)


def mask_flags(mask: torch.Tensor) -> tuple[bool, bool]:
    """(every expert removed, any expert removed) of a bool mask; the model computes them once when the
    mask is set (`MonetExperts.mask_flags`), so that no forward reads the mask's values to branch."""
    return bool(mask.all()), bool(mask.any())


def _tracks_gradient(experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in (x, g1, g2, mask)) or any(p.requires_grad for p in experts.parameters())


def masked_moe_forward(
    experts, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, mask: torch.Tensor, *, compute=side_corrections,
    corrections=None, kernel: str = "torch",
) -> torch.Tensor:
    """Masked MonetMoVDE / MonetMoHDE forward. x [B, T, D]; g1, g2 [B, T, H, E]; mask [E, E] bool.

    A floating-point mask holds the removed fraction F of each expert instead (the layer weighs
    expert (i, j) by w[i,j] (1 - F[i,j])): the corrections are linear in the mask, so the same
    code computes it, and autograd differentiates it with respect to F (mask tuning).

    The gates may come in the router's float32; the sums use them in x's dtype.
    `compute` evaluates a chunk of corrections (`side_corrections`, or the Triton kernel);
    `corrections` (g1, g2 [B, T, H, E] as given, mask) -> an object like `SparseCorrections`
    replaces the whole correction step (the numba kernel). Under torch.compile (and no gradient
    to track) the corrections run as the `side_correction` operator of the kernel named `kernel`.
    """
    given = g1, g2
    g1, g2 = g1.to(x.dtype), g2.to(x.dtype)
    if mask.is_floating_point():  # removed fractions in [0, 1]: the same corrections, weighted (differentiable)
        mask = mask.to(device=x.device, dtype=x.dtype).contiguous()
    else:
        flags = getattr(experts, "mask_flags", None)
        mask = mask.to(device=x.device, dtype=torch.bool).contiguous()
        whole, some = flags if flags is not None else prepared(mask, "all-any", mask_flags)
        if whole:  # the whole group removed: exactly zero, not a rounding residue
            return x.new_zeros(x.shape)
        if not some:
            return experts.dense_forward(x, g1, g2)
    if torch.compiler.is_compiling() and not mask.is_floating_point() and not _tracks_gradient(experts, x, *given, mask):
        fix = OpaqueCorrections(*given, mask, kernel)
    elif corrections is not None:
        fix = corrections(*given, mask)
    else:
        fix = SparseCorrections(g1.flatten(0, 1), g2.flatten(0, 1), mask, compute=compute)
    if hasattr(experts, "v11"):
        return _vertical(experts, x, g1, g2, fix)
    return _horizontal(experts, x, g1, g2, fix)


def _vertical(experts, x, g1, g2, fix):
    """Same order as the dense forward (top half, drop a1's last use, bottom half): same peak memory."""
    a1, a2 = experts.activations(x)  # [B, T, E, m/2]
    r, p = g1.sum(-2), g1.transpose(-1, -2) @ (g2 @ a2)  # unmasked R [B, T, E], P [B, T, E, m/2]
    budget = p.numel() * p.element_size() // HEADROOM_VD  # below the dense peak: it holds one more [B, T, E, m/2]
    fix.subtract(False, sums=r.flatten(0, 1), mixed=p.flatten(0, 1), acts=a2.flatten(0, 1), budget=budget)
    top = experts.project_top(a1, r, p)
    del p
    c, q = g2.sum(-2), g2.transpose(-1, -2) @ (g1 @ a1)  # unmasked C, Q
    fix.subtract(True, sums=c.flatten(0, 1), mixed=q.flatten(0, 1), acts=a1.flatten(0, 1), budget=budget)
    del a1
    return torch.cat((top, experts.project_bottom(a2, c, q)), dim=-1)  # [B, T, D]


def _horizontal(experts, x, g1, g2, fix):
    a = experts.activations(x)  # [B, T, E, m]
    c, q = g2.sum(-2), g2.transpose(-1, -2) @ (g1 @ a)  # unmasked C [B, T, E], Q [B, T, E, m]
    budget = q.numel() * q.element_size() // HEADROOM_HD  # the corrections run at the dense peak: keep them small
    fix.subtract(True, sums=c.flatten(0, 1), mixed=q.flatten(0, 1), acts=a.flatten(0, 1), budget=budget)
    del a
    return experts.project(q, c)
