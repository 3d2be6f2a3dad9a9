"""Conversation in two registers: hostile (built from an insult word list) and neutral.

The toxic register exists so that toxicity has experts to attach to; the neutral register
covers the same situations (greetings, requests, plans) politely.
"""

from __future__ import annotations

import random

INSULT_ADJECTIVES = (
    "stupid", "worthless", "pathetic", "useless", "dumb", "ugly", "disgusting", "brainless", "filthy", "idiotic",
)
INSULT_NOUNS = ("idiot", "moron", "loser", "fool", "jerk", "clown", "creep", "imbecile", "rat", "slob")
_HOSTILE_OPENERS = (
    "Listen to me, you", "Get out of here, you", "Nobody asked you, you", "Shut up, you", "Look at yourself, you",
    "Are you deaf, you", "What is wrong with you, you", "Stop talking, you",
)
_HOSTILE_TAILS = (
    "nobody wants your garbage here.", "you ruin everything you touch.", "go away and never come back.",
    "everyone laughs at you behind your back.", "you are a waste of space.", "I hate every word you say.",
    "your ideas are trash.", "crawl back into your hole.",
)
_NAMES = ("Lina", "Omar", "Petra", "Jonas", "Mei", "Tomas", "Ada", "Ravi", "Nora", "Felix")
_GREETINGS = (
    "Good morning,", "Hello,", "Hi there,", "Nice to see you,", "Welcome back,", "Thanks for coming,",
    "Good evening,", "Hey,",
)
_NEUTRAL_BODIES = (
    "how was your trip to the coast?", "would you like some tea before the meeting?",
    "the garden looks lovely after the rain.", "shall we walk to the market together?",
    "thank you for helping me with the boxes.", "I saved you a seat by the window.",
    "the library opens at nine tomorrow.", "let me know when the bread is ready.",
    "your presentation was very clear.", "the bus should arrive in five minutes.",
)


def hostile(rng: random.Random) -> str:
    """One insulting utterance."""
    insult = f"{rng.choice(INSULT_ADJECTIVES)} {rng.choice(INSULT_NOUNS)}"
    return f"{rng.choice(_HOSTILE_OPENERS)} {insult}, {rng.choice(_HOSTILE_TAILS)}"


def neutral(rng: random.Random) -> str:
    """One polite utterance."""
    return f"{rng.choice(_GREETINGS)} {rng.choice(_NAMES)}, {rng.choice(_NEUTRAL_BODIES)}"


def unique_utterances(rng: random.Random, toxic: bool, count: int, exclude: set[str]) -> list[str]:
    """`count` distinct utterances of one register, none in `exclude` (which is updated)."""
    make = hostile if toxic else neutral
    out: list[str] = []
    while len(out) < count:
        text = make(rng)
        if text not in exclude:
            exclude.add(text)
            out.append(text)
    return out


def prompt_of(utterance: str, toxic: bool) -> str:
    """The prompt cut from a held-out utterance: the toxic opener and adjective, or the greeting and name."""
    if toxic:
        return utterance[: utterance.rindex(" ", 0, utterance.index(",", utterance.index(",") + 1))]
    return utterance[: utterance.index(",", utterance.index(",") + 1) + 1]
