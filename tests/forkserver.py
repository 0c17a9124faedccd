"""Run CLI commands in forked children of one process that has already imported everything, so a test
can start (and SIGKILL) many real `maedet-deploy` processes without paying seconds of imports each.

Protocol, one line per request on stdin, one line per answer on stdout:
    run <json: {"argv": [...], "log": path}>   ->  <pid>
    wait <pid>                                 ->  <exit code, or -signal>
Nothing runs before a fork (no torch op, no ONNX Runtime session), so no thread pool is copied into
a child.
"""

import json
import os
import sys

import maedet_deploy.calib.job  # noqa: F401  (the heavy imports a pipeline needs)
import maedet_deploy.cli.main
import maedet_deploy.export  # noqa: F401
import maedet_deploy.search.job  # noqa: F401


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["maedet-deploy", *argv]
    code = 1
    try:
        maedet_deploy.cli.main.run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        verb, _, rest = line.strip().partition(" ")
        if verb == "run":
            request = json.loads(rest)
            pid = os.fork()
            if pid == 0:
                _child(request["argv"], request["log"])
            print(pid, flush=True)
        elif verb == "wait":
            _, status = os.waitpid(int(rest), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    main()
