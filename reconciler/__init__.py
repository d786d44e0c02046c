"""fwrecon: keeps a host's firewall equal to a directory of policy files."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("firewall-reconciler")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
