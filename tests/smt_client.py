"""Sumatra's own `smt` command in a git working copy, for the tests that run the real client.

``SmtProject`` (main.py reads default.param; `smt` found next to this Python) serves the export and
import tests; ``SmtSession`` (main.py takes its arguments; keeps a transcript) serves the HTTP store,
relay and contract tests."""

import os
import subprocess
import sys
from pathlib import Path

SMT_TIMEOUT = 120.0  # seconds for one command of an SmtSession
SMT = Path(sys.executable).with_name("smt")
PROJECT_TIMEOUT = 60.0  # seconds for one smt or git command; each takes well under one

PARAM_MAIN_PY = """import os, sys
params = dict((k.strip(), v.strip()) for k, v in (line.split("=", 1) for line in open(sys.argv[1]) if "=" in line))
os.makedirs("Data", exist_ok=True)
with open(os.path.join("Data", "out-%s.txt" % params["n"]), "w") as out:
    out.write("result for %s\\n" % params)
print("computed", params)
"""


class SmtProject:
    """A git working copy with main.py and default.param in which `smt` commands run."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BALSAMDB_"))}
        env.update(HOME=str(self.workdir.parent), PATH=f"{SMT.parent}{os.pathsep}{env.get('PATH', '')}",
                   GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@lab.example", GIT_COMMITTER_NAME="Ada",
                   GIT_COMMITTER_EMAIL="ada@lab.example")
        self.env = env
        (self.workdir / "main.py").write_text(PARAM_MAIN_PY)
        (self.workdir / "default.param").write_text("n = 1\nalpha = 0.5\n")
        for args in (["init", "-q"], ["add", "main.py", "default.param"], ["commit", "-q", "-m", "the model"]):
            subprocess.run(["git", *args], cwd=self.workdir, env=self.env, check=True, timeout=PROJECT_TIMEOUT)

    def __call__(self, *args):
        proc = subprocess.run([str(SMT), *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=PROJECT_TIMEOUT, check=False)
        assert proc.returncode == 0, f"$ smt {' '.join(args)}\n{proc.stdout}{proc.stderr}"
        return proc



def _smt_env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "BALSAMDB_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@lab.example", GIT_COMMITTER_NAME="Ada",
               GIT_COMMITTER_EMAIL="ada@lab.example")
    return env


ARGV_MAIN_PY = """import os, sys
os.makedirs("Data", exist_ok=True)
with open(os.path.join("Data", "out-%s.txt" % "-".join(sys.argv[1:])), "w") as out:
    out.write("result for %s\\n" % sys.argv[1:])
print("computed", *sys.argv[1:])
"""


class SmtSession:
    """`smt` commands in a git working copy, with a transcript of what they printed."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir()
        self.env = _smt_env(self.workdir.parent)
        self.transcript = []
        (self.workdir / "main.py").write_text(ARGV_MAIN_PY)
        for args in (["init", "-q"], ["add", "main.py"], ["commit", "-q", "-m", "the model"]):
            subprocess.run(["git", *args], cwd=self.workdir, env=self.env, check=True, timeout=60)

    def popen(self, *args):
        return subprocess.Popen(["smt", *args], cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def __call__(self, *args, check=True):
        proc = subprocess.run(["smt", *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=SMT_TIMEOUT)
        self.transcript.append(f"$ smt {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        if check:
            assert proc.returncode == 0, self.transcript[-1]
        return proc
