"""Run COMMAND with DIR bind-mounted read-only over itself.

Started by tests under ``unshare --mount --propagation private``: the mounts
live in that private mount namespace and end with it, never reaching the
host's.  Usage: read_only_mount.py DIR COMMAND...
"""

import subprocess
import sys

directory, *command = sys.argv[1:]
subprocess.run(["mount", "--bind", directory, directory], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
sys.exit(subprocess.run(command).returncode)
