"""`slurmrunner admin ...`: users, API tokens, Resources and Profiles, from the shell.

These work on the service's database directly (no server, no token needed): they bootstrap a
fresh machine and recover a lost superuser. They go through the same functions and request
schemas as the API's admin routes, so the same rules apply, and they bring the database to this
version's schema first, as `serve` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from ..config import load_json_or_toml, parse_config
from ..errors import SlurmRunnerError
from .output import fail, say
from .service_cmds import DbOpt, database, open_db, request

admin_app = typer.Typer(
    help="Manage the service's users, API tokens, Resources and Profiles (on its database, "
    "no server needed).",
    no_args_is_help=True,
)


def _say_token(secret: str, email: str) -> None:
    say(f"API token for {escape(email)} (shown once, only its hash is kept):")
    typer.echo(secret)


@admin_app.command("create-user")
def create_user(
    email: Annotated[str, typer.Argument(help="The user's e-mail (their login name).")],
    superuser: Annotated[bool, typer.Option("--superuser", help="May use /admin.")] = False,
    profile: Annotated[
        str | None, typer.Option(help="Link this Profile (by name): the user can run.")
    ] = None,
    token_name: Annotated[str, typer.Option(help="Label of the first API token.")] = "cli",
    db: DbOpt = None,
) -> None:
    """Create a user and print their first API token (once, on standard output)."""
    from ..service import accounts, clusters
    from ..service.schemas.users import UserCreate

    with database(db) as session:
        profile_id = clusters.profile_by_name(session, profile).id if profile else None
        body = request(UserCreate, email=email, is_superuser=superuser, profile_id=profile_id)
        user = accounts.create_user(session, body)
        _, secret = accounts.issue_token(session, user, token_name)
    kind = "superuser" if superuser else "user"
    say(
        f"created {kind} {user.id} {escape(user.email)}"
        + (f", Profile {escape(profile)}" if profile else ", no Profile (cannot run yet)")
    )
    _say_token(secret, user.email)


@admin_app.command("issue-token")
def issue_token(
    email: Annotated[str, typer.Argument(help="The user's e-mail.")],
    name: Annotated[str, typer.Option(help="Label, to tell tokens apart.")] = "cli",
    db: DbOpt = None,
) -> None:
    """Issue another API token to a user and print it (once, on standard output)."""
    from ..service import accounts
    from ..service.schemas.users import TokenCreate

    with database(db) as session:
        user = accounts.user_by_email(session, email)
        _, secret = accounts.issue_token(session, user, request(TokenCreate, name=name).name)
    _say_token(secret, user.email)


@admin_app.command("list-tokens")
def list_tokens(
    email: Annotated[str, typer.Argument(help="The user's e-mail.")], db: DbOpt = None
) -> None:
    """List a user's tokens (id, prefix, name, state; never the secret)."""
    from ..service import accounts

    with database(db) as session:
        tokens = accounts.list_tokens(session, accounts.user_by_email(session, email))
    for t in tokens:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        typer.echo(f"{t.id}\t{t.prefix}…\t{t.name}\t{state}")


@admin_app.command("revoke-token")
def revoke_token(
    email: Annotated[str, typer.Argument(help="The user's e-mail.")],
    token: Annotated[
        str | None, typer.Argument(help="Token id or prefix (see list-tokens).")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Revoke every token of the user.")] = False,
    db: DbOpt = None,
) -> None:
    """Revoke one token of a user (by id or prefix), or all of them with --all."""
    from ..service import accounts

    if (token is None) == (not all_):
        fail("give a TOKEN (id or prefix) or --all, not both")
    with database(db) as session:
        user = accounts.user_by_email(session, email)
        tokens = accounts.list_tokens(session, user)
        chosen = tokens if all_ else [t for t in tokens if token in (str(t.id), t.prefix)]
        if not chosen:
            fail(f"{email} has no token {token!r} (see: slurmrunner admin list-tokens {email})")
        for t in chosen:
            accounts.revoke_token(session, t)
    say(f"revoked {len(chosen)} token(s) of {escape(user.email)}")


ResourceType = Literal["local", "slurm_sudo", "slurm_ssh"]


@admin_app.command("create-resource")
def create_resource(
    name: Annotated[str, typer.Argument(help="Resource name (unique).")],
    type_: Annotated[ResourceType, typer.Option("--type", help="Backend.")],
    config: Annotated[
        Path | None,
        typer.Option(help="Admin runner config (JSON or TOML, as `config check` takes)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="SSH host (slurm_ssh).")] = None,
    port: Annotated[int, typer.Option(help="SSH port (slurm_ssh).")] = 22,
    poll_interval: Annotated[int, typer.Option(help="Seconds between squeue calls.")] = 5,
    max_active_runs_per_user: Annotated[
        int | None, typer.Option(help="Runs a user may have going at once (default: no limit).")
    ] = None,
    max_tasks_per_run: Annotated[
        int | None, typer.Option(help="Tasks one run may hold (default: no limit).")
    ] = None,
    prevent_new_submissions: Annotated[
        bool,
        typer.Option("--prevent-new-submissions", help="Refuse new runs on it (maintenance)."),
    ] = False,
    db: DbOpt = None,
) -> None:
    """Create a Resource (a cluster, or this machine for `local`) with its runner config."""
    from ..service import clusters
    from ..service.schemas.clusters import ResourceCreate

    document: dict[str, Any] = {}
    if config is not None:
        try:
            document = load_json_or_toml(config)
            parse_config(document, str(config))  # the same message as `config check FILE`
        except SlurmRunnerError as exc:
            fail(str(exc))
    body = request(
        ResourceCreate,
        name=name,
        type=type_,
        host=host,
        port=port,
        jobs_runner_config=document,
        jobs_poll_interval=poll_interval,
        max_active_runs_per_user=max_active_runs_per_user,
        max_tasks_per_run=max_tasks_per_run,
        prevent_new_submissions=prevent_new_submissions,
    )
    with database(db) as session:
        resource = clusters.create_resource(session, body)
    say(f"created Resource {resource.id} {escape(resource.name)} ({resource.type})")


@admin_app.command("create-profile")
def create_profile(
    name: Annotated[str, typer.Argument(help="Profile name (unique).")],
    resource: Annotated[str, typer.Option(help="The Resource's name.")],
    username: Annotated[
        str | None, typer.Option(help="Cluster account to act as (sudo) or log in as (SSH).")
    ] = None,
    jobs_remote_dir: Annotated[
        str | None, typer.Option(help="The user's folder on the cluster (absolute).")
    ] = None,
    ssh_key_path: Annotated[str | None, typer.Option(help="Private key (slurm_ssh).")] = None,
    known_hosts: Annotated[str | None, typer.Option(help="known_hosts file (slurm_ssh).")] = None,
    db: DbOpt = None,
) -> None:
    """Create a Profile on a Resource, checked against its impersonation policy."""
    from ..service import clusters
    from ..service.schemas.clusters import ProfileCreate

    with database(db) as session:
        body = request(
            ProfileCreate,
            name=name,
            resource_id=clusters.resource_by_name(session, resource).id,
            username=username,
            jobs_remote_dir=jobs_remote_dir,
            ssh_key_path=ssh_key_path,
            known_hosts=known_hosts,
        )
        profile = clusters.create_profile(session, body)
    say(f"created Profile {profile.id} {escape(profile.name)} on Resource {escape(resource)}")


@admin_app.command("upgrade-db")
def upgrade_db(db: DbOpt = None) -> None:
    """Create or upgrade the database to this version's schema (serve does it too)."""
    from ..service.db import describe_db, parse_db_url
    from ..service.migrate import current_revision

    engine = open_db(db)
    revision = current_revision(engine)
    engine.dispose()
    say(f"{escape(describe_db(parse_db_url(db)))}: at revision {revision}")
