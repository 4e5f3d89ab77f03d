"""`db run [JOB_ID] -- CMD`: run a command as a job (claimed, RUNNING, lease renewed, end recorded)."""

import json
import os
import sys

import click

from balsamdb.job_run import TAIL_BYTES, run_command

from .common import CONTEXT_SETTINGS, open_db, path_option


class _RunCommand(click.Command):
    """Everything after ``--`` is the command, kept whole (its options are not ours)."""

    def parse_args(self, ctx, args):
        if "--" not in args:
            if any(a in ("-h", "--help") for a in args):
                return super().parse_args(ctx, args)
            raise click.UsageError("give the command after --, e.g. db run -- python sim.py", ctx=ctx)
        split = args.index("--")
        ctx.meta["run_command"] = args[split + 1:]
        return super().parse_args(ctx, args[:split])


@click.command("run", cls=_RunCommand, context_settings=CONTEXT_SETTINGS)
@click.argument("job_id", metavar="[JOB_ID]", required=False)
@path_option
@click.option("--name", "-n", help="Name of the job to create (without JOB_ID)  [default: the command's name]")
@click.option("--workflow", "-w", default="default", show_default=True, help="Workflow of the job to create")
@click.option("--owner", help="Who holds the job while it runs  [default: user@host:pid]")
@click.option("--lease", type=click.FloatRange(min=3), default=60.0, show_default=True, metavar="SECONDS",
              help="Lease of the claim, renewed every third of it; a run that stops renewing is found lost "
                   "within one lease")
@click.option("--tail", "tail_bytes", type=click.IntRange(min=0, max=1 << 20), default=TAIL_BYTES,
              show_default=True, metavar="BYTES", help="Bytes of stdout and of stderr kept in the job's data")
@click.option("--record", "record_project", metavar="PROJECT",
              help="Save the run's provenance as a Sumatra record in PROJECT, linked to the job (docs/provenance.md)")
@click.option("--input", "inputs", multiple=True, metavar="PATH|GLOB",
              help="With --record: an input file (repeat; globs; relative to the job's working directory)")
@click.option("--output", "outputs", multiple=True, metavar="PATH|GLOB",
              help="With --record: an output besides the files found changed in the working directory (repeat)")
@click.option("--parameters", metavar="FILE", help="With --record: the parameter file (YAML, JSON, INI, Sumatra's)")
@click.option("--max-digest-bytes", type=click.IntRange(min=0), metavar="N",
              help="With --record: do not hash files larger than N bytes (their size is still recorded)")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON at the end (on stderr)")
def run(job_id, path, name, workflow, owner, lease, tail_bytes, record_project, inputs, outputs, parameters,
        max_digest_bytes, as_json):
    """Run a command as a job: claim it, mark it RUNNING, record how it ended

    Without JOB_ID a job is created (READY) and run.  While the command runs
    its lease is renewed; the job ends RUN_DONE (exit status 0) or RUN_ERROR,
    with the exit status and the tails of stdout and stderr in its data
    ("run").  If this process dies, the server finds the run lost within one
    lease.  The command runs in the job's working directory with
    BALSAM_JOB_ID and BALSAM_DB_PATH set; `db run` exits with its status.
    --record PROJECT also saves a Sumatra record of the run (code version,
    parameters, platform, inputs and outputs with SHA-256), linked to the job.

    Example:

    \b
        db run -- python sim.py --temperature 300
        db run 3f2a -- ./simulate input.nml
        db run --name sim-7 --workflow sweep --lease 120 -- ./sim
        db run 3f2a --record sweep --parameters params.yaml -- python sim.py params.yaml
    """
    command = click.get_current_context().meta.get("run_command") or []
    if not command:
        raise click.UsageError("give the command after --, e.g. db run -- python sim.py")
    create = None if job_id else {"name": name or command[0].rsplit("/", 1)[-1], "workflow": workflow,
                                  "application": " ".join(command)}
    with open_db(path) as db:
        if job_id:
            from .job import resolve_job_ids

            (job_id,) = resolve_job_ids(db, [job_id])
        around = None
        if record_project:
            from balsamdb.provenance import RecordAround

            # the command runs in the job's working directory: paths given here are of the caller's
            here = [os.path.abspath(p) for p in (parameters,) if p]
            around = RecordAround(record_project, command, inputs=[os.path.abspath(p) for p in inputs],
                                  outputs=[os.path.abspath(p) for p in outputs],
                                  parameters=here[0] if here else None, max_digest_bytes=max_digest_bytes)
        elif inputs or outputs or parameters or max_digest_bytes is not None:
            raise click.UsageError("--input, --output, --parameters and --max-digest-bytes go with --record PROJECT")
        running = run_command(db, command, job_id=job_id, owner=owner, lease=lease, tail_bytes=tail_bytes,
                              create=create, around=around)
        if as_json:
            click.echo(json.dumps(db.jobs.get(running.job_id).to_dict()), err=True)
    sys.exit(running.returncode if running.returncode is not None else 1)
