"""`stepedit settings`: every setting, its environment variable, default and description.

`stepedit settings --markdown > docs/settings.md` writes the reference table; a test fails when
the file is stale, so a new field without a description, or one not regenerated, is caught.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Settings

Every setting is an environment variable (`STEPEDIT_<NAME>`); `stepedit serve` and
`stepedit worker` also take the common ones as options (`--help`). Durations take a number of
seconds (`3600`), a number with a unit (`90s`, `15m`, `1h`, `7d`) or an ISO 8601 duration
(`PT1H`). Lists are comma-separated.

This file is generated from the settings classes (`stepedit settings --markdown >
docs/settings.md`); a test fails when it is stale.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("settings", help="list every setting (STEPEDIT_*)")
    parser.add_argument(
        "--markdown", action="store_true", help="the reference table of docs/settings.md"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_markdown(), end="")
        return 0
    for name, variable, default, description in rows():
        print(f"{variable}={default}\n    {name}: {description}")
    return 0


def rows() -> list[tuple[str, str, str, str]]:
    """(field, variable, default, description) of every setting: the single machine's, then
    those only a fleet reads."""
    from stepedit.distributed.config import DistributedSettings
    from stepedit.settings import Settings

    fields = dict(Settings.model_fields)
    fleet_only = {k: v for k, v in DistributedSettings.model_fields.items() if k not in fields}
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return [
        (name, f"{prefix}{name.upper()}", describe_default(info), describe(name, info))
        for name, info in (*fields.items(), *fleet_only.items())
    ]


def settings_markdown() -> str:
    lines = [HEADER, "| Variable | Default | Description |", "| --- | --- | --- |"]
    for _name, variable, default, description in rows():
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{variable}` | {default} | {escaped} |")
    return "\n".join(lines) + "\n"


def describe(name: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"setting {name} has no description")
    return " ".join(info.description.split())


def describe_default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, timedelta):
        return f"`{_number(value.total_seconds())}` s ({_human(value)})"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return ", ".join(f"`{item}`" for item in value) or "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{_number(value)}`" if isinstance(value, float) else f"`{value}`"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _human(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
