"""A generated fictional world whose knowledge a model can only learn from its training text.

Six knowledge domains named like MMLU-Pro categories, three programming languages and two
conversational registers (toxic, neutral), written in disjoint splits: training text, profiling
text, quizzes, held-out code and toxicity prompts. Same seed, same world.
"""

from .code import LANGUAGES
from .domains import DOMAIN_SPECS, DOMAINS
from .generate import Fact, Sizes, World, build_world, read_train, save_world, write_world

__all__ = [
    "DOMAINS",
    "DOMAIN_SPECS",
    "LANGUAGES",
    "Fact",
    "Sizes",
    "World",
    "build_world",
    "read_train",
    "save_world",
    "write_world",
]
