"""Run a command as on a host where some programs are not installed.

usage: without_tools.py PROGRAM [PROGRAM ...] -- COMMAND [ARG ...]

Runs itself again in a private mount namespace (unshare), binds /dev/null
(which is not executable) over the real file behind each PROGRAM, then
becomes COMMAND. The host's files and mounts stay as they are.
"""

import os
import shutil
import subprocess
import sys

INSIDE = "--inside-private-mounts"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def main(argv: list[str]) -> None:
    if argv[:1] != [INSIDE]:
        unshare = shutil.which("unshare", path=SEARCH_PATH) or "unshare"
        os.execv(unshare, [unshare, "--mount", "--propagation", "private", sys.executable, __file__, INSIDE, *argv])
    split = argv.index("--")
    for program in argv[1:split]:
        found = shutil.which(program, path=SEARCH_PATH)
        if found is None:
            sys.exit(f"without_tools.py: {program} is not installed in the first place")
        subprocess.run(["mount", "--bind", "/dev/null", os.path.realpath(found)], check=True)
    command = argv[split + 1 :]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
