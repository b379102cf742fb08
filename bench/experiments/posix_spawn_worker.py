#!/usr/bin/python3
"""Experiment (issue 5): the worker launching tasks with os.posix_spawn instead of fork().

    bench/experiments/posix_spawn_worker.py SRC_WORKER_PY OUT_WORKER_PY

Writes a copy of slurmrunner's worker.py whose `_spawn` uses `os.posix_spawn` (glibc:
vfork + exec, no Python code in the child) with the same effects as the fork path: new
session, stdin/stdout/stderr redirected, SIGTERM/SIGINT back to default, empty signal mask;
the working directory is set once in the worker (every task of a job has the same one).
Exec errors still raise OSError in the worker (glibc >= 2.24), so `launch_error` is kept.

Used by bench/experiments/README.md to measure the gain on W1/W3 without touching src/.
"""

import sys

src = open(sys.argv[1]).read()
start = src.index("    def _spawn(self, cmd, stdin, logfd, env):")
end = src.index("    def finish(self")
new = """    def _spawn(self, cmd, stdin, logfd, env):
        # posix_spawn (vfork + exec in glibc): nothing of the interpreter is copied and no
        # Python code runs in the child; the worker still reaps with wait4 (peak memory).
        cwd = self.p.get("workdir") or self.run_dir
        if os.getcwd() != cwd:
            os.chdir(cwd)
        spawn = os.posix_spawn if "/" in cmd[0] else os.posix_spawnp
        return spawn(
            cmd[0],
            cmd,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, logfd, 1),
                (os.POSIX_SPAWN_DUP2, logfd, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=(signal.SIGTERM, signal.SIGINT),
        )

"""
out = src[:start] + new + src[end:]
assert "os.fork()" not in out[out.index("def _spawn") : out.index("def finish")]
open(sys.argv[2], "w").write(out)
