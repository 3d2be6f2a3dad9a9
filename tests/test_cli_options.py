"""Every command spells and means an option the same way: one name per option, the checkpoint as
the first argument everywhere, the shared options declared once (resect.cli.options)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from typer.main import get_command

from resect.cli import app
from resect.cli.options import OPTIONS, with_options


def _commands(group, prefix: str = ""):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


COMMANDS = dict(_commands(get_command(app)))


def _options(command) -> dict:
    return {p.name: p for p in command.params if p.param_type_name == "option" and p.name != "help"}


def test_every_flag_has_one_parameter_name_everywhere():
    names: dict[str, set[str]] = defaultdict(set)
    for _, command in COMMANDS.items():
        for param in _options(command).values():
            for flag in (*param.opts, *param.secondary_opts):
                names[flag].add(param.name)
    assert len(names) > 30
    assert {flag: found for flag, found in names.items() if len(found) > 1} == {}


def test_the_checkpoint_is_the_first_argument_of_every_command_that_reads_one():
    readers = [name for name, command in COMMANDS.items() if any(p.name in ("model", "edited") for p in command.params)]
    assert {"domain", "language", "toxicity", "select", "eval", "toxicity-eval", "verify", "profile", "experts", "apply", "info"} <= set(readers)
    for name in readers:
        command = COMMANDS[name]
        first = next(p for p in command.params if p.param_type_name == "argument")
        assert first.name in ("model", "edited") and first.metavar == "MODEL", name
        assert not any({"--model", "-m"} & set(p.opts) for p in _options(command).values()), name


# An option a command declares itself under a shared name, and why it may read differently there.
OWN = {("profile", "scorer"): "unset, tokens are not scored (the choices are the same)"}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_a_shared_option_reads_the_same_in_every_command(name):
    uses = [(cmd, _options(c)[name]) for cmd, c in COMMANDS.items() if name in _options(c) and (cmd, name) not in OWN]
    assert uses, f"shared option {name} is used by no command"
    def reading(cmd: str, option) -> tuple:
        with COMMANDS[cmd].make_context(cmd, [], resilient_parsing=True) as ctx:
            return option.opts, option.help, option.default, option.multiple, option.get_help_record(ctx)

    first = reading(*uses[0])
    for cmd, option in uses[1:]:
        assert reading(cmd, option) == first, cmd
    for cmd, own in OWN:
        if own == name:
            assert _options(COMMANDS[cmd])[name].metavar == uses[0][1].metavar


def test_the_edit_commands_share_their_options():
    domain, language, toxicity = (set(_options(COMMANDS[k])) for k in ("domain", "language", "toxicity"))
    assert domain == language
    common = {"include_path", "general_tasks", "min_target_drop", "max_general_drop", "limit", "groups", "batch_size", "seed",
              "device", "dtype", "mirror", "no_cache", "force", "dry_run", "out"}  # fmt: skip
    assert common <= domain & toxicity
    assert {"toxicity_prompts", "samples", "max_new_tokens", "temperature", "top_p", "scorer"} <= toxicity


def test_batch_size_means_the_same_everywhere():
    defaults = {cmd: _options(c)["batch_size"].default for cmd, c in COMMANDS.items() if "batch_size" in _options(c)}
    assert len(defaults) >= 7 and len(set(defaults.values())) == 1, defaults


def test_a_command_cannot_claim_an_option_that_is_not_shared():
    def command(x: int = 0, **options) -> None: ...

    with pytest.raises(KeyError):
        with_options("no_such_option")(command)


def test_every_option_and_argument_explains_itself_and_flags_take_no_value_metavar():
    missing = [(cmd, p.name) for cmd, c in COMMANDS.items() for p in c.params if p.name != "help" and not (getattr(p, "help", None) or "").strip()]
    assert missing == []
    flags = [(cmd, p.name, p.metavar) for cmd, c in COMMANDS.items() for p in _options(c).values() if p.is_flag and p.metavar != ""]
    assert flags == []


@pytest.mark.parametrize("args", [["--help"], ["apply", "--help"], ["domain", "--help"], ["mask", "union", "--help"]])
def test_help_shows_no_value_placeholder_on_any_flag(args, capsys, monkeypatch):
    from _cli import run_cli

    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = run_cli(args, capsys, monkeypatch)
    assert code == 0 and "<bool>" not in out and "--help" in out
    if args == ["--help"]:
        assert "Cut knowledge out of a model" in out and "mission" not in out
