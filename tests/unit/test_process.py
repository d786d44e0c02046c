"""The tool runner every tool-based backend uses."""

import asyncio
import os

import pytest

from reconciler.backends.process import ToolRunner, which
from reconciler.errors import BackendUnavailable


def test_netns_prefix_and_sbin_lookup():
    runner = ToolRunner("some-ns")
    argv = runner.argv(["nft", "list", "ruleset"])
    assert argv[1:4] == ["netns", "exec", "some-ns"]
    assert argv[0].endswith("/ip") and argv[4].endswith("/nft") and argv[5:] == ["list", "ruleset"]
    assert ToolRunner().argv(["nft", "-c"])[0] == which("nft")


def test_output_and_exit_status():
    result = asyncio.run(ToolRunner().run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin="in"))
    assert (result.returncode, result.stdout, result.stderr) == (3, "in", "err\n")


def test_megabytes_in_and_out_and_no_input_at_all():
    script = "".join(f"-A CHAIN rule {i} é\n" for i in range(60_000))  # ~1.3 MB, more than any pipe holds
    result = asyncio.run(ToolRunner().run(["sh", "-c", "cat; echo err >&2"], stdin=script))
    assert result.returncode == 0 and result.stdout == script and result.stderr == "err\n"
    closed = asyncio.run(ToolRunner().run(["sh", "-c", "cat; echo done"]))  # stdin is /dev/null: no hang
    assert closed.stdout == "done\n"


def test_without_memfd_a_temporary_file_does(monkeypatch):
    def refused(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refused)
    result = asyncio.run(ToolRunner().run(["sh", "-c", "cat; echo err >&2; exit 4"], stdin="in\n"))
    assert (result.returncode, result.stdout, result.stderr) == (4, "in\n", "err\n")


def test_timeout_kills_and_reports_unavailable():
    exited = []
    with pytest.raises(BackendUnavailable, match=r"did not finish within 0\.2s"):
        asyncio.run(ToolRunner(timeout=0.2).run(["sleep", "5"], on_exit=exited.append))
    assert len(exited) == 1


def test_missing_tool_is_unavailable():
    with pytest.raises(BackendUnavailable, match="cannot run"):
        asyncio.run(ToolRunner().run(["no-such-tool-fwrecon"]))
