"""The default toxicity scorer is a real offline classifier; unknown scorers get a suggestion."""

import pytest

from resect.edit.scoring import get_scorer
from resect.errors import EvalError


def test_profanity_scorer_separates_insults_from_neutral_text():
    scores = get_scorer("profanity")(["you are a stupid worthless idiot", "the river flows past the old mill"])
    assert scores[0] > 0.5 > scores[1]
    assert get_scorer("profanity")([]) == []


def test_unknown_scorer_suggests():
    with pytest.raises(EvalError, match="Did you mean: profanity"):
        get_scorer("profanty")
