"""Edited checkpoints: a source's weights (hard links, never modified) plus a mask, in HF layout.

The folder loads three ways: with `import resect` and `AutoModelForCausalLM`; through
`trust_remote_code=True` without resect (it carries configuration_monet.py, modeling_monet.py
and the pure-torch masked path as monet_masking.py, named by `auto_map`); and with lm-eval's CLI.
config.json gains a "resect" key saying what was done; a short README.md card repeats it.
Applying masks to an edited checkpoint composes them (union) and keeps the original source.
Everything is written to a work folder beside the destination, then moved into place
(resect.outputs: --force replaces only an edited checkpoint resect wrote, and only once the new one is whole).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CheckpointError, MaskError, OutputError
from ..model.checkpoint import INDEX_FILE, inspect_checkpoint
from ..model.fingerprint import checkpoint_fingerprint
from ..model.hub import resolve_model_path
from ..model.mask import CHECKPOINT_FILE as MASK_FILE
from ..model.mask import ExpertMask

log = logging.getLogger(__name__)

MASKING_MODULE = "monet_masking"
EXPORT_IMPORT = "from ..kernels.dispatch import masked_moe_forward  # resect:export-import"
AUTO_MAP = {"AutoConfig": "configuration_monet.MonetConfig", "AutoModel": "modeling_monet.MonetModel",
            "AutoModelForCausalLM": "modeling_monet.MonetForCausalLM"}  # fmt: skip
CODE_FILES = ("configuration_monet.py", "modeling_monet.py", "monet_layers.py", f"{MASKING_MODULE}.py")  # what an edited folder carries
OWN_FILES = {"config.json", "README.md", MASK_FILE, *CODE_FILES, "resect_run.yaml"}  # the last: a run's configuration, not carried further


@dataclass
class ApplyResult:
    """What `apply_masks` wrote."""

    path: Path
    mask: ExpertMask
    source: Path
    linked: int  # weight files hard-linked (the rest were copied)
    copied: int


def load_masks(masks: list[str | os.PathLike | ExpertMask], config: dict[str, Any]) -> ExpertMask:
    """Read, validate against the model's geometry and unite the given masks."""
    union = ExpertMask.empty_like(config)
    for item in masks:
        mask = item if isinstance(item, ExpertMask) else ExpertMask.load(item)
        mask.validate_for(config)
        union = union | mask
    return union


def _selection_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """What the checkpoint's own mask file says about how its experts were chosen: the one mask's
    selection (rule, target, parameters, statistics fingerprints), or each united mask's."""
    metas = [{k: v for k, v in m.items() if k not in ("source", "resect_version")} for m in metas]
    metas = [m for m in metas if m]
    if len(metas) == 1:
        return metas[0]
    return {"united": metas} if metas else {}


def _check_masks_fit(masks: list[str | os.PathLike | ExpertMask], source: Path, fingerprint: str) -> None:
    """A mask selected on another model's statistics is refused, even when its geometry fits.

    Masks record the fingerprint of the checkpoint their statistics came from, which does not
    depend on the dtype or device it was profiled in."""
    for item in masks:
        mask = item if isinstance(item, ExpertMask) else ExpertMask.load(item)
        recorded = mask.meta.get("stats_model_fingerprint")
        if recorded and recorded != fingerprint:
            name = "a mask" if isinstance(item, ExpertMask) else f"Mask '{item}'"
            raise MaskError(
                f"{name} was selected on statistics of another model (fingerprint {recorded}; '{source}' is {fingerprint}). "
                "Select it from this model's statistics."
            )


def _inputs(source: Path, out: Path, masks: list) -> list:
    """What `out` must not touch: the source and the mask files (the source named as such)."""
    from ..paths import resolve_path

    src, dst = resolve_path(source, "the source"), resolve_path(out)
    if dst == src:
        raise OutputError(f"Output '{out}' is the source checkpoint. Choose a new folder: the source is never modified.")
    if src.is_relative_to(dst):
        raise OutputError(f"Output '{out}' contains the source checkpoint '{source}'. Choose a folder outside it.")
    return [source, *(m for m in masks if not isinstance(m, ExpertMask))]


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link src to dst (True); copy when links are impossible, e.g. across filesystems (False).
    A symlink (a Hugging Face cache snapshot's files are links to its blobs) is followed first."""
    src = src.resolve()
    try:
        os.link(src, dst)
        return True
    except OSError:
        _copy(src, dst)
        return False


def _copy(src: Path, dst: Path) -> None:
    """Copy the bytes; the new file gets the permissions the user's umask gives (not the source's:
    an installed package's files may be read-only)."""
    from ..paths import current_umask

    shutil.copyfile(src, dst)
    os.chmod(dst, 0o666 & ~current_umask())


def _weight_origin(source: Path, provenance: dict[str, Any] | None, shards: list[str]) -> Path:
    """The folder whose weight files to link: the original source of an edited checkpoint when it
    still holds the same files, else the given folder (whose files are links to them anyway)."""
    original = Path(provenance["source"]) if provenance and provenance.get("source") else None
    if original is None or not original.is_dir():
        return source
    same = all((original / s).is_file() and (original / s).stat().st_size == (source / s).stat().st_size for s in shards)
    return original if same else source


def bundle_code(folder: Path) -> None:
    """configuration_monet.py, modeling_monet.py, monet_layers.py (import rewritten) and monet_masking.py."""
    for name, text in model_code().items():
        (folder / name).write_text(text)  # new files: the user's umask


def model_code() -> dict[str, str]:
    """The modeling code an edited (or the built-in) checkpoint carries, by file name: resect's own
    files, with monet_layers.py importing the pure-torch masked path from beside it."""
    import importlib.util

    here = Path(__file__).parent.parent / "model"
    masked_torch = importlib.util.find_spec("resect.kernels.masked_torch").origin  # its file, without importing torch
    layers = (here / "monet_layers.py").read_text()
    if EXPORT_IMPORT not in layers:
        raise OutputError("resect's monet_layers.py lacks its export import line; reinstall resect.")
    return {
        "configuration_monet.py": (here / "configuration_monet.py").read_text(),
        "modeling_monet.py": (here / "modeling_monet.py").read_text(),
        "monet_layers.py": layers.replace(EXPORT_IMPORT, f"from .{MASKING_MODULE} import masked_moe_forward"),
        f"{MASKING_MODULE}.py": Path(masked_torch).read_text(),
    }


def _card(provenance: dict[str, Any], mask: ExpertMask) -> str:
    counts = ", ".join(f"group {g}: {n:,}" for g, n in mask.counts().items())
    return f"""---
library_name: transformers
tags: [monet, resect, expert-ablation]
---
# Edited Monet checkpoint

Experts removed exactly by resect {provenance['version']} (the removed experts' terms are dropped
from each layer's expert sum; no weight was changed).

- Source: `{provenance['source']}` (fingerprint `{provenance['source_fingerprint']}`)
- Mask: `{MASK_FILE}`, fingerprint `{mask.fingerprint()}`, {mask.total:,} of
  {mask.moe_experts ** 2 * mask.num_groups:,} experts removed ({counts})
- Weights: the source's files, hard-linked where possible (editing them here edits the source).

Load with resect installed (`import resect`, then `AutoModelForCausalLM.from_pretrained(path)`),
or without it: `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`.
"""


def apply_masks(
    model: str | os.PathLike,
    masks: list[str | os.PathLike | ExpertMask],
    out: str | os.PathLike,
    *,
    force: bool = False,
) -> ApplyResult:
    """Write an edited checkpoint of `model` with the union of `masks` (and any mask it has) to `out`."""
    from ..outputs import claim
    from ..ownership import check_output

    source = resolve_model_path(model)
    info = inspect_checkpoint(source)
    out = Path(out).expanduser()
    inputs = _inputs(source, out, masks)
    check_output(out, inputs, kind="checkpoint", force=force, make_parents=True)
    provenance = info.config.get("resect") if isinstance(info.config.get("resect"), dict) else None
    mask = load_masks(masks, info.config)
    selections = [m.meta for m in (x if isinstance(x, ExpertMask) else ExpertMask.load(x) for x in masks) if m.meta]
    if provenance and provenance.get("mask"):
        from ..paths import member

        earlier = ExpertMask.load(member(source, provenance["mask"]["file"], what=f"'{source}/config.json'", error=CheckpointError))
        mask = load_masks([earlier], info.config) | mask
        selections = [earlier.meta, *selections] if earlier.meta else selections
    mask.meta = {"source": str(source.resolve()), "resect_version": __version__, **_selection_meta(selections)}
    record = {
        "version": __version__,
        "source": (provenance or {}).get("source") or str(source.resolve()),
        "source_fingerprint": (provenance or {}).get("source_fingerprint") or checkpoint_fingerprint(source),
        "mask": mask.checkpoint_record(),
    }
    _check_masks_fit(masks, source, record["source_fingerprint"])
    with claim(out, "checkpoint", inputs=inputs, force=force) as c:
        work = c.work_folder()
        with c.naming_the_output():
            linked, copied = _fill(work, source, info, provenance, mask, record)
        c.finish(work)
    log.info("wrote %s: %d weight files linked, %d copied", out, linked, copied)
    return ApplyResult(path=out, mask=mask, source=Path(record["source"]), linked=linked, copied=copied)


def _fill(tmp: Path, source: Path, info, provenance, mask: ExpertMask, record: dict) -> tuple[int, int]:
    """Populate the temporary folder; returns (weight files linked, weight files copied)."""
    weights = [*info.shards, *([INDEX_FILE] if (source / INDEX_FILE).is_file() else [])]
    origin = _weight_origin(source, provenance, info.shards)
    links = [_link_or_copy(origin / name, tmp / name) for name in weights]
    for item in sorted(source.iterdir()):  # tokenizer, generation config, ...
        if item.is_file() and item.name not in OWN_FILES and item.name not in weights and not item.name.startswith("."):
            _copy(item, tmp / item.name)
    mask.save(tmp / MASK_FILE)
    bundle_code(tmp)
    config = dict(info.config)
    config["auto_map"] = dict(AUTO_MAP)
    config["resect"] = record
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "README.md").write_text(_card(record, mask))
    return sum(links), len(links) - sum(links)


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The "resect" record of an edited checkpoint's config.json, or None for an unedited one."""
    from ..files import read_json

    config = read_json(Path(path) / "config.json", what="Checkpoint config", error=CheckpointError)
    value = config.get("resect") if isinstance(config, dict) else None
    return value if isinstance(value, dict) else None


__all__ = ["ApplyResult", "apply_masks", "load_masks", "read_provenance", "MASK_FILE"]
