"""`stepedit webhook-secret`: show or rotate an API key's webhook signing secret.

    stepedit webhook-secret --api-key KEY            # the key's secret (generated if none yet)
    stepedit webhook-secret --api-key KEY --rotate   # a new one; the old one still signs for
                                                     # STEPEDIT_WEBHOOK_SECRET_OVERLAP (24 h)
    stepedit webhook-secret --rotate                 # anonymous callers' (no API keys)

It works on the job database the server uses (`--data-dir`, `--database-url`, or STEPEDIT_*), so the
servers (every node of a fleet) sign with the new secret from their next delivery on.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "webhook-secret", help="show or rotate an API key's webhook signing secret"
    )
    parser.add_argument("--api-key", help="the key whose secret it is (default: anonymous use)")
    parser.add_argument("--rotate", action="store_true", help="replace it with a new one")
    parser.add_argument("--data-dir", type=Path, help="the server's data directory")
    parser.add_argument("--database-url", help="the server's job database")
    parser.add_argument(  # the older spelling, still accepted
        "--db", dest="database_url", help=argparse.SUPPRESS, default=argparse.SUPPRESS
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stepedit.api.deps import owner_for_key
    from stepedit.errors import StepEditError
    from stepedit.jobs.storage import DataDirError, check_data_dir
    from stepedit.jobs.store import JobStore
    from stepedit.jobs.webhooks import WebhookSecrets
    from stepedit.settings import Settings

    overrides = {
        name: value
        for name, value in (("data_dir", args.data_dir), ("database_url", args.database_url))
        if value is not None
    }
    settings = Settings(**overrides)
    try:
        check_data_dir(settings.data_dir)
        store = JobStore(settings.resolved_database_url)
    except (DataDirError, StepEditError) as exc:
        logger.error("%s", exc)
        return 2
    try:
        secrets = WebhookSecrets(store, settings)
        owner = owner_for_key(args.api_key) if args.api_key else None
        secret = secrets.rotate(owner) if args.rotate else secrets.current(owner)
    except StepEditError as exc:
        logger.error("%s", exc.message)
        return 2
    finally:
        store.close()
    print(secret)
    return 0
