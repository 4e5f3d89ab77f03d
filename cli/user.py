"""`db user`: the people who may use the HTTP record store, and their projects."""

import sys

import click

from balsamdb.exceptions import NotFound
from balsamdb.passwords import hash_password

from .common import CONTEXT_SETTINGS, echo_json, json_option, open_db, path_option


@click.group("user", context_settings=CONTEXT_SETTINGS)
def user():
    """Add, list and remove users of the HTTP record store, and grant them projects

    Example:

    \b
        db user add ada                 # asks for a password
        db user grant ada MyProject
        db user ls
    """


def _password(password_stdin):
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sys.stdin.isatty():
        # Asking would echo the password, or read it from a pipe meant for something else.
        command = click.get_current_context().info_name
        raise click.UsageError("no terminal to ask for the password: give it on the first line of stdin "
                               f"with --password-stdin, e.g. echo \"$PW\" | db user {command} NAME --password-stdin")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password may not be empty")
    return password


@user.command("add")
@click.argument("name")
@path_option
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--admin/--no-admin", default=None,
              help="An admin may use every operation over HTTP: jobs, users, whole-store copies "
                   "(default for a new user: no).")
def add(name, path, password_stdin, admin):
    """Add a user (or change the password of an existing one)

    The password is stored as a scrypt hash, never as text.  Users reach the
    records of their projects (db user grant); admins reach everything, so that
    balsamdb.connect("http://...") and db copy can use the whole store.

    Example:

    \b
        db user add ada
        echo "$PW" | db user add ada --password-stdin
        db user add lab-admin --admin
    """
    password_hash = hash_password(_password(password_stdin))
    with open_db(path) as db:
        created = db.users.save(name, password_hash=password_hash, admin=admin)
    click.echo(f"{'added' if created else 'changed the password of'}"
               f"{' admin' if admin and created else ''} {'user ' if created else ''}{name}")


@user.command("passwd")
@click.argument("name")
@path_option
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def passwd(name, path, password_stdin):
    """Change the password of a user

    Example:

    \b
        db user passwd ada
    """
    with open_db(path) as db:
        db.users.get(name)  # not found: a clear error before asking
        db.users.save(name, password_hash=hash_password(_password(password_stdin)))
    click.echo(f"changed the password of {name}")


@user.command("rm")
@click.argument("name")
@path_option
def rm(name, path):
    """Remove a user and their permissions

    Example:

    \b
        db user rm ada
    """
    with open_db(path) as db:
        db.users.delete(name)
    click.echo(f"removed user {name}")


@user.command("ls")
@path_option
@json_option
def ls(path, as_json):
    """List the users and the projects each may use

    Example:

    \b
        db user ls --json
    """
    with open_db(path) as db:
        users = db.users.list()
    if as_json:
        echo_json(users)
        return
    if not users:
        click.echo("no users (add one with: db user add NAME)")
    for item in users:
        projects = "(every project: admin)" if item.get("admin") else ", ".join(item["projects"]) or "(no projects)"
        click.echo(f"{item['name']:<20} {projects}")


@user.command("grant")
@click.argument("name")
@click.argument("project")
@click.option("--create", is_flag=True, help="Make the project when it does not exist (else a typo is refused)")
@path_option
def grant(name, project, create, path):
    """Let a user read and write a project of the HTTP record store

    Example:

    \b
        db user grant ada MyProject
        db user grant ada NewProject --create
    """
    with open_db(path) as db:
        if not create:
            try:
                db.projects.get(project)
            except NotFound:
                raise click.ClickException(f"project {project!r} does not exist (db project ls lists them); "
                                           "add --create to make it") from None
        granted = db.users.grant(name, project)
    click.echo(f"{name} {'may now use' if granted else 'could already use'} project {project}")
