"""The operations on users and their permissions (the HTTP record store)."""

from ..exceptions import BadRequest, NotFound
from ..models import Project, ProjectPermission, User, now
from .checks import check_project_name, check_text, check_user_name
from .records import get_project
from .registry import operation


@operation(write=True)
def user_save(name, password_hash=None, admin=None):
    """Create user ``name`` or change their password or admin flag; ``password_hash``
    is made by ``balsamdb.passwords.hash_password`` (the password itself never reaches
    the store), required for a new user.  An admin may use every operation over HTTP
    (jobs, users, whole-store copies); others only the records of their projects.
    Returns ``{"created": bool}``."""
    name = check_user_name(name)
    if password_hash is not None:
        password_hash = check_text(password_hash, "password_hash", max_len=512)
        if not password_hash.startswith("scrypt$"):
            raise BadRequest("password_hash must come from balsamdb.passwords.hash_password")
    if admin is not None and not isinstance(admin, bool):
        raise BadRequest("admin must be true or false")
    created = User.get_or_none(User.name == name) is None
    if created:
        if password_hash is None:
            raise BadRequest(f"user {name!r} is new: give a password_hash")
        User.create(name=name, password_hash=password_hash, created_at=now(), admin=bool(admin))
    else:
        changes = {k: v for k, v in (("password_hash", password_hash), ("admin", admin)) if v is not None}
        if changes:
            User.update(**changes).where(User.name == name).execute()
    return {"created": created}


@operation(write=True)
def user_delete(name):
    """Delete user ``name`` and their permissions; not found is an error."""
    name = check_user_name(name)
    ProjectPermission.delete().where(ProjectPermission.user == name).execute()
    if not User.delete().where(User.name == name).execute():
        raise NotFound(f"no user {name!r}")
    return {"deleted": 1}


@operation(write=False)
def user_list():
    """All users, by name, with the projects each may use (no password hashes)."""
    grants = {}
    for perm in ProjectPermission.select():
        grants.setdefault(perm.user_id, []).append(perm.project_id)
    return [{"name": u.name, "created_at": u.created_at, "admin": bool(u.admin),
             "projects": sorted(grants.get(u.name, []))} for u in User.select().order_by(User.name)]


@operation(write=False)
def user_get(name):
    """User ``name`` with their password hash, for a server that checks passwords."""
    user = User.get_or_none(User.name == check_user_name(name))
    if user is None:
        raise NotFound(f"no user {name!r}")
    projects = [p.project_id for p in ProjectPermission.select().where(ProjectPermission.user == user.name)]
    return {"name": user.name, "password_hash": user.password_hash, "admin": bool(user.admin),
            "projects": sorted(projects)}


@operation(write=True)
def permission_grant(project, user):
    """Let ``user`` read and write ``project`` (the project is created if needed)."""
    project, user = check_project_name(project), check_user_name(user)
    if User.get_or_none(User.name == user) is None:
        raise NotFound(f"no user {user!r}; add one with: db user add {user}")
    Project.get_or_create(name=project, defaults={"created_at": now()})
    _, created = ProjectPermission.get_or_create(project=project, user=user)
    return {"granted": created}


@operation(write=False)
def permission_list(project):
    """Users who may use ``project``."""
    get_project(project)
    return sorted(p.user_id for p in ProjectPermission.select().where(ProjectPermission.project == project))
