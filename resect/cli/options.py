"""Options shared by the commands, declared once so that every command spells and means them the same."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

Device = Annotated[
    str,
    typer.Option(
        "--device", metavar="auto|cpu|cuda|cuda:N",
        help="Where the model runs: auto (a CUDA GPU when this torch sees one, else the CPU), cpu, cuda or cuda:N.",
    ),
]  # fmt: skip
Dtype = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],  # resect.loading.DTYPE_CHOICES
    typer.Option("--dtype", help="Weights and activations: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16."),
]  # fmt: skip


def placement(device: str, dtype: str) -> tuple[str, str]:
    """(device, dtype) resolved and checked: a missing GPU is one line before any model loads."""
    from resect.loading import resolve_placement

    return resolve_placement(device, dtype)
