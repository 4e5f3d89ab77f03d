"""`db project`: the projects that group Sumatra records, and their settings."""

import click

from balsamdb.exceptions import NotFound

from .common import CONTEXT_SETTINGS, echo_json, echo_table, format_time, json_option, open_db, path_option, shorten


@click.group("project", context_settings=CONTEXT_SETTINGS)
def project():
    """List projects, show one, change its settings

    A project is made by its first record (db record add, smt run) or here
    with `db project set P --create`.

    Example:

    \b
        db project ls
        db project show MyProject
        db project set MyProject --public --description "the 2024 sweep"
    """


def _access(p):
    return "public" if p["public"] else "members"


@project.command("ls")
@path_option
@json_option
def ls(path, as_json):
    """List the projects: name, number of records, public or not, description

    Example:

    \b
        db project ls
        db project ls --json
    """
    with open_db(path) as db:
        projects = db.projects.list(count=True)
    if as_json:
        echo_json(projects)
        return
    if not projects:
        click.echo("No projects.")
        return
    echo_table(["project", "records", "access", "write-once", "description"],
               [[p["name"], str(p["records"]), _access(p), "yes" if p["write_once"] else "no",
                 shorten(p["description"], 50)] for p in projects])


def _show(p, as_json):
    if as_json:
        echo_json(p)
        return
    for name, value in (("project", p["name"]), ("description", p["description"]),
                        ("records", p.get("records", "")), ("access", _access(p)),
                        ("write-once", "yes" if p["write_once"] else "no"), ("created", format_time(p["created_at"]))):
        click.echo(f"{name + ':':13} {value}")


@project.command("show")
@click.argument("name")
@path_option
@json_option
def show(name, path, as_json):
    """Show a project's settings and number of records

    Example:

    \b
        db project show MyProject
    """
    with open_db(path) as db:
        _show(db.projects.get(name), as_json)


@project.command("set")
@click.argument("name")
@path_option
@click.option("--public/--private", "public", default=None,
              help="Public: anyone may read it over HTTP; private: its users only")
@click.option("--description", metavar="TEXT", help="What the project is about")
@click.option("--write-once/--no-write-once", "write_once", default=None,
              help="Write-once: a save that changes a record's provenance is refused (409) instead of "
                   "replacing it (default: off)")
@click.option("--keep-versions", type=click.IntRange(min=0), default=None, metavar="N",
              help="db prune removes the versions of each record beyond its newest N (0: keep every version, "
                   "the default)")
@click.option("--create", is_flag=True, help="Make the project when it does not exist")
@json_option
def set_(name, path, public, description, write_once, keep_versions, create, as_json):
    """Change a project's settings (those not given stay as they are)

    Example:

    \b
        db project set MyProject --public
        db project set MyProject --write-once
        db project set NewProject --create --description "made before its first run"
    """
    if public is None and description is None and write_once is None and keep_versions is None and not create:
        raise click.UsageError("give a setting: --public/--private, --description TEXT, --write-once/--no-write-once, "
                               "--keep-versions N")
    with open_db(path) as db:
        if not create:
            try:
                db.projects.get(name)
            except NotFound:
                raise click.ClickException(f"project {name!r} does not exist (db project ls lists them); "
                                           "add --create to make it") from None
        db.projects.save(name, description=description, public=public, write_once=write_once,
                         keep_versions=keep_versions)
        _show(db.projects.get(name), as_json)
