"""One spelling per concept across the `stepedit` subcommands.

A flag that sets a setting is spelled as the setting (`--database-url` for
STEPEDIT_DATABASE_URL, `--queue-url`, `--model-version`); a request field as the API's short
name (`--guidance-scale`, `--steps`). Older spellings stay accepted but are hidden from --help.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from stepedit import __version__
from stepedit.cli import build_parser, main

# Every spelling one concept has had or might plausibly get; each concept may show one of them.
CONCEPTS: dict[str, frozenset[str]] = {
    "model release": frozenset({"--model-version", "--version", "--release"}),
    "job database": frozenset({"--database-url", "--db", "--database", "--db-url"}),
    "broker": frozenset({"--queue-url", "--queue", "--broker", "--broker-url"}),
    "guidance": frozenset({"--guidance-scale", "--guidance", "--cfg-scale", "--cfg"}),
    "speed preset": frozenset({"--optimize", "--mode", "--optimization", "--preset"}),
    "denoising steps": frozenset({"--steps", "--num-inference-steps", "--num-steps"}),
    "working size": frozenset({"--size", "--size-level"}),
    "images per edit": frozenset({"--n", "--num-images"}),
    "negative prompt": frozenset({"--negative-prompt", "--negative"}),
    "text encoder": frozenset({"--text-encoder", "--mllm", "--encoder"}),
    "data directory": frozenset({"--data-dir", "--data", "--data-path"}),
    "public origin": frozenset({"--public-base-url", "--base-url", "--public-url"}),
    "LoRA adapter": frozenset({"--lora", "--loras", "--adapter"}),
    "API key": frozenset({"--api-key", "--key", "--token"}),
    "safety checker": frozenset({"--no-safety-checker", "--no-safety", "--no-nsfw-filter"}),
}
# Suffixes that do not make a new concept: `--queue` and `--queue-url` name the same thing.
NOISE_SUFFIXES = ("-url", "-scale", "-dir", "-path", "-file")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("stepedit has no subcommands")


def visible_options() -> list[tuple[str, argparse.Action, list[str]]]:
    """(subcommand, action, long spellings) for every option --help shows."""
    found = []
    for command, parser in subcommands().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            # --x/--no-x (BooleanOptionalAction) is one spelling of one switch
            negated = {f"--no-{s[2:]}" for s in action.option_strings}
            spellings = [
                s for s in action.option_strings if s.startswith("--") and s not in negated
            ]
            if spellings and spellings != ["--help"]:
                found.append((command, action, spellings))
    return found


def spelling_table(key_of: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """key -> spelling -> the subcommands showing it, for spellings with a key."""
    table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for command, _action, spellings in visible_options():
        for spelling in spellings:
            if spelling in key_of:
                table[key_of[spelling]][spelling].append(command)
    return table


def test_help_shows_one_spelling_per_option() -> None:
    doubled = {
        f"{command} {' '.join(spellings)}"
        for command, _action, spellings in visible_options()
        if len(spellings) > 1
    }
    assert not doubled, f"hide the older spelling (help=argparse.SUPPRESS): {sorted(doubled)}"


def test_each_concept_has_one_spelling_across_subcommands() -> None:
    concept_of = {spelling: concept for concept, group in CONCEPTS.items() for spelling in group}
    table = spelling_table(concept_of)
    spelled_twice = {concept: dict(used) for concept, used in table.items() if len(used) > 1}
    assert not spelled_twice, spelled_twice


def test_a_flag_and_its_suffixed_form_are_not_both_shown() -> None:
    """`--queue` on one subcommand and `--queue-url` on another: caught without a table."""
    spellings = {spelling for _command, _action, shown in visible_options() for spelling in shown}
    stem_of = {spelling: _stem(spelling) for spelling in spellings}
    table = spelling_table(stem_of)
    spelled_twice = {stem: dict(used) for stem, used in table.items() if len(used) > 1}
    assert not spelled_twice, spelled_twice


def test_one_destination_has_one_spelling() -> None:
    """Two subcommands filling the same setting spell its flag alike."""
    table: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for command, action, spellings in visible_options():
        table[action.dest][spellings[0]].append(command)
    spelled_twice = {dest: dict(used) for dest, used in table.items() if len(used) > 1}
    assert not spelled_twice, spelled_twice


def test_dtype_takes_the_same_values_everywhere() -> None:
    dtypes = [
        (command, action) for command, action, shown in visible_options() if "--dtype" in shown
    ]
    assert len(dtypes) > 1
    for command, action in dtypes:
        for value in ("bf16", "fp16", "fp32"):
            assert action.choices is None or value in action.choices, command
            assert action.type is None or (callable(action.type) and action.type(value)), command


def _stem(spelling: str) -> str:
    for suffix in NOISE_SUFFIXES:
        if spelling.endswith(suffix):
            return spelling.removesuffix(suffix)
    return spelling


EDIT = ["edit", "in.png", "add a hat", "-o", "out.png"]
CONVERT = ["convert", "dummy:tiny-v1.1", "out", "--to", "diffusers"]


@pytest.mark.parametrize(
    ("command", "older", "current", "given", "dest", "value"),
    [
        (EDIT, "--guidance", "--guidance-scale", "5", "guidance", 5.0),
        (EDIT, "--version", "--model-version", "v1.2", "model_version", "v1.2"),
        (CONVERT, "--version", "--model-version", "v1.0", "version", "v1.0"),
        (["download", "org/repo"], "--version", "--model-version", "v1.0", "version", "v1.0"),
        (["serve"], "--db", "--database-url", "sqlite://", "database_url", "sqlite://"),
        (["serve"], "--queue", "--queue-url", "redis://q", "queue_url", "redis://q"),
        (["worker"], "--db", "--database-url", "sqlite://", "database_url", "sqlite://"),
        (["worker"], "--queue", "--queue-url", "redis://q", "queue_url", "redis://q"),
        (["webhook-secret"], "--db", "--database-url", "sqlite://", "database_url", "sqlite://"),
        (["bench"], "--mode", "--optimize", "plain", "mode", ["plain"]),
    ],
)
def test_older_spellings_still_work(
    command: list[str], older: str, current: str, given: str, dest: str, value: object
) -> None:
    parser = build_parser()
    assert getattr(parser.parse_args([*command, older, given]), dest) == value
    assert getattr(parser.parse_args([*command, current, given]), dest) == value


def test_defaults_are_kept_when_neither_spelling_is_given() -> None:
    parser = build_parser()
    edit = parser.parse_args(EDIT)
    assert (edit.guidance, edit.model_version) == (6.0, None)
    serve = parser.parse_args(["serve"])
    assert (serve.database_url, serve.queue_url) == (None, None)
    assert parser.parse_args(["bench"]).mode is None
    assert parser.parse_args(["bench", "--optimize", "exact", "--mode", "fast"]).mode == [
        "exact",
        "fast",
    ]


def test_top_level_version_still_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_edit_optimize_names_what_this_device_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--optimize fast` asks for FP8, which a CPU has not: a usage error naming the flag, not
    a traceback."""
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(source)
    argv = ["edit", str(source), "add a hat", "-o", str(tmp_path / "out.png")]
    argv += ["--model", "dummy:tiny-v1.1", "--device", "cpu", "--size", "512", "--steps", "1"]
    assert main([*argv, "--no-progress", "--optimize", "fast"]) == 2
    error = capsys.readouterr().err
    assert "--optimize fast:" in error and "FP8" in error
    assert not (tmp_path / "out.png").exists()
